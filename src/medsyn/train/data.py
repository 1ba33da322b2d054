"""Training data: the prepared cache, class selection, per-class groups and a resumable sharded sampler.

Only the cache's `train` split is used. Label groups are the classes, plus the negative group when the data
has images with no positive label, named as the dataset names it (NIH's 'No Finding', 'normal' for most
other sets, or the spec's `?negative=NAME`); unconditional models train one generator per group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from medsyn.data.adapters import default_negative_class
from medsyn.data.cache import CachedImages, PreparedDataset, prepare
from medsyn.data.spec import parse_spec
from medsyn.data.splits import select_classes
from medsyn.errors import DataError
from medsyn.models import MODELS, GANConfig
from medsyn.train.config import TrainConfig
from medsyn.train.distributed import DistInfo, barrier
from medsyn.train.logs import notice


@dataclass(frozen=True)
class Group:
    """One label group: a class (one-hot label) or the negative group (all-zero label)."""

    name: str
    label: tuple[float, ...]
    count: int  # training images in the group
    dir: str  # sub-run folder of a per-class (unconditional) run, relative to the run folder

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": list(self.label), "count": self.count, "dir": self.dir}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        return cls(str(d["name"]), tuple(float(v) for v in d["label"]), int(d["count"]), str(d["dir"]))


@dataclass
class TrainData:
    """The training rows of a prepared cache after class selection."""

    cache: PreparedDataset
    classes: list[str]
    rows: np.ndarray  # cache row numbers of the training images
    labels: np.ndarray  # (len(cache), K) float32 over `classes`, NaN = masked; only `rows` are used

    @property
    def source_format(self) -> str:
        return str(self.cache.meta.get("source_format", parse_spec(self.cache.spec).kind))

    @property
    def negative_class(self) -> str:
        """Name of the group of images without a positive label ('No Finding', 'normal', ...)."""
        meta = self.cache.meta
        return str(
            meta.get("negative_class") or default_negative_class(self.source_format, meta.get("source_info", {}))
        )

    def model_config(self, cfg: TrainConfig) -> GANConfig:
        """The run's model configuration on this data: its channels, the classes a conditional model sees and,
        for a mask model (twostage), the label values of the training masks."""
        info = MODELS[cfg.model]
        k = len(self.classes) if info.conditional else 0
        extra = {**cfg.model_extra, "mask_labels": self.cache.mask_labels} if info.masks else cfg.model_extra
        return GANConfig(cfg.model, cfg.size, self.cache.channels, k, cfg.z_dim, cfg.width, extra)

    def patients(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) int: each row's patient as a number 0..P-1 (P patients among `rows`)."""
        ids = self.cache.index["patient_id"].astype(str).to_numpy()[rows]
        return np.unique(ids, return_inverse=True)[1].astype(np.int64)

    def positives(self) -> np.ndarray:
        """(len(rows), K) bool: NaN (masked) labels count as negative, as in conditioning."""
        return np.nan_to_num(self.labels[self.rows], nan=0.0) > 0

    def groups(self, per_class: bool) -> list[Group]:
        """Label groups with their training counts; `per_class` gives each its own sub-run folder."""
        pos = self.positives()
        k = len(self.classes)
        groups = []
        negative = self.negative_class
        names = [*self.classes, negative] if _has_negative(self.classes, pos, negative) else list(self.classes)
        for i, name in enumerate(names):
            label = tuple(float(j == i) for j in range(k))
            count = int(pos[:, i].sum()) if i < k else int((~pos.any(axis=1)).sum())
            groups.append(Group(name, label, count, f"classes/{_slug(name, i)}" if per_class else "."))
        return groups

    def group_rows(self, group: Group) -> np.ndarray:
        """Training rows of one group: positives of a class, or (negative group) images with no positive label."""
        pos = self.positives()
        keep = pos[:, group.label.index(1.0)] if any(group.label) else ~pos.any(axis=1)
        return self.rows[keep]

    def label_stats(self) -> dict[str, Any]:
        """Aggregate training label distribution (multi-hot combinations and their counts), for generation."""
        combos, counts = np.unique(self.positives().astype(np.int8), axis=0, return_counts=True)
        order = np.lexsort(combos.T[::-1]) if self.classes else np.arange(len(combos))  # no classes: one combo
        info = self.cache.meta.get("source_info", {})
        return {
            "classes": list(self.classes),
            "combos": [{"label": combos[i].tolist(), "count": int(counts[i])} for i in order],
            "source_format": self.source_format,
            "source_options": dict(parse_spec(self.cache.spec).options),
            # a csv source's own column names, so that a synthetic set is written in its format
            "source_columns": {"image": info.get("image_column"), "patient": info.get("patient_column")},
            "negative_class": self.negative_class,
            "train_images": len(self.rows),
        }


def _has_negative(classes: list[str], pos: np.ndarray, name: str) -> bool:
    """The data has a negative group when images without any positive label exist (and no class is already
    called that, as CheXpert's 'No Finding' is)."""
    return name.lower() not in {c.lower() for c in classes} and bool((~pos.any(axis=1)).any())


def _slug(name: str, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{index:02d}-{slug or 'class'}"


def cache_dir_for(cfg: TrainConfig, out_dir: Path) -> Path:
    """Where a spec is prepared: one folder per (spec, size, split seed) under `cfg.cache` or RUN/../."""
    root = Path(cfg.cache) if cfg.cache else out_dir.absolute().parent / ".medsyn-cache"
    spec = parse_spec(cfg.data)
    key = hashlib.sha256(f"{spec}|{cfg.size}|{cfg.split_seed}".encode()).hexdigest()[:12]
    return root / f"{spec.kind}-{cfg.size}px-{key}"


def open_train_data(cfg: TrainConfig, out_dir: Path, info: DistInfo, quiet: bool) -> TrainData:
    """Open (or prepare, on rank 0 first) the cache, check its size and select the configured classes."""
    path = Path(cfg.data)
    if (path / "meta.json").is_file():
        cache = PreparedDataset(path)
    else:
        target = cache_dir_for(cfg, out_dir)
        if info.main:
            prepare(cfg.data, cfg.size, target, seed=cfg.split_seed, quiet=quiet)
        barrier(info)
        cache = PreparedDataset(target)
    if cache.size != cfg.size:
        raise DataError(f"{cache.path}: cache holds {cache.size} px images but the run asks for size {cfg.size}")
    table = cache.index[cache.index["split"] == "train"]
    if table.empty:
        raise DataError(f"{cache.path}: the cache has no 'train' split images")
    masks = MODELS[cfg.model].masks
    if masks:
        table = _masked(cache, table, cfg.model)
    classes = list(cache.classes)
    if not classes and not masks:
        raise DataError(f"{cache.path}: the set has no labels (an image+mask set); only --model twostage trains on it")
    if cfg.classes:
        table, classes = select_classes(table, classes, list(cfg.classes))
    labels = np.full((len(cache), len(classes)), np.nan, dtype=np.float32)
    rows = table["row"].to_numpy(dtype=np.int64)
    labels[rows] = table[classes].to_numpy(dtype=np.float32)
    unknown = np.isnan(labels[rows]).all(axis=1) & bool(classes)  # no classes: an unconditional image+mask set
    if unknown.all():
        raise DataError(f"{cache.path}: no training image has a known label for {', '.join(classes)}")
    if unknown.any():  # masked is not negative: such an image belongs to no label group and conditions nothing
        if info.main:
            notice(f"{int(unknown.sum())} training images have no known label (all masked): left out of training")
        rows = rows[~unknown]
    return TrainData(cache, classes, rows, labels)


def _masked(cache: PreparedDataset, table: pd.DataFrame, model: str) -> pd.DataFrame:
    """The training rows that have a mask (a mask model trains on image + mask pairs only)."""
    if not cache.has_masks:
        raise DataError(f"{cache.path}: --model {model} trains on image + mask pairs but this set has no masks; give "
                        "them (csv: a mask column, folder: ?mask_dir=DIR, phantom and covid have them) and prepare "
                        "it with ?masks=only")  # fmt: skip
    table = table[table["row"].isin(cache.mask_rows("train"))]
    if table.empty:
        raise DataError(f"{cache.path}: no training image has a mask; prepare the set with ?masks=only")
    return table


class ImageMaskPairs(torch.utils.data.Dataset):
    """Items (image with its mask as one more uint8 channel (C + 1, S, S), labels): one tensor, so the training
    loop moves and shuffles pairs exactly as it does images (a mask model splits them again, train/twostage.py)."""

    def __init__(self, dataset: CachedImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask, labels = self.dataset[i]
        return torch.cat([image, mask]), labels


class ShardedBatches(Sampler[list[int]]):
    """Endless batches of positions into a dataset of `n` items, starting after `start` items.

    Epoch e is the `DistributedSampler` permutation for (seed, e), sharded by rank; epochs are concatenated,
    so the stream depends only on (n, seed, rank, world) and a resumed run continues it exactly.
    """

    def __init__(self, n: int, batch: int, info: DistInfo, seed: int, start: int = 0) -> None:
        self.n, self.batch, self.info, self.seed, self.start = n, batch, info, seed, start
        self._shards = DistributedSampler(
            range(n), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed, drop_last=False
        )

    def _positions(self) -> Iterator[int]:
        per_epoch = len(self._shards)
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            self._shards.set_epoch(epoch)
            yield from list(self._shards)[skip:]
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        positions = self._positions()
        while True:
            yield [next(positions) for _ in range(self.batch)]


class PoissonBatches(Sampler[list[int]]):
    """Endless Poisson-sampled batches from step `start_step` on: each step every item is in the batch
    independently with probability `rate`, so the batch size varies (and may be 0).

    This is the sampling the privacy analysis of DP-SGD assumes (the sampled Gaussian mechanism); fixed-size
    shuffled batches are not covered by it. Step s's draw depends only on (seed, s), so a resumed run repeats it.
    `units`: the unit (patient) of each item, 0..U-1: each unit is drawn with probability `rate` and brings all
    its items (patient-level DP); None: each item is its own unit.
    """

    def __init__(self, n: int, rate: float, seed: int, start_step: int = 0, units: np.ndarray | None = None) -> None:
        self.n, self.rate, self.seed, self.start_step, self.units = n, rate, seed, start_step, units

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        count = self.n if self.units is None else int(self.units.max()) + 1
        while True:
            chosen = np.random.default_rng([self.seed, POISSON_STREAM, step]).random(count) < self.rate
            yield np.flatnonzero(chosen if self.units is None else chosen[self.units]).tolist()
            step += 1


class WithUnits(torch.utils.data.Dataset):
    """A dataset's items with each item's unit (patient number) appended, for patient-level DP."""

    def __init__(self, dataset: CachedImages, units: np.ndarray) -> None:
        self.dataset, self.units = dataset, torch.from_numpy(units)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (*self.dataset[i], self.units[i])


POISSON_STREAM = 0x9015  # keeps Poisson draws apart from any other stream seeded with the same numbers


def _collate(batch: list[tuple[torch.Tensor, ...]], shape: tuple[int, ...], k: int, units: bool) -> Any:
    """default_collate, and an empty (0, ...) batch for the empty draws Poisson sampling can make."""
    if not batch:
        empty = torch.empty((0, *shape), dtype=torch.uint8), torch.empty((0, k), dtype=torch.float32)
        return (*empty, torch.empty(0, dtype=torch.long)) if units else empty
    return default_collate(batch)


def make_loader(
    data: TrainData,
    rows: np.ndarray,
    batch: int,
    info: DistInfo,
    seed: int,
    start: int,
    workers: int,
    pin_memory: bool,
    poisson_rate: float | None = None,
    units: np.ndarray | None = None,
    masks: bool = False,
) -> DataLoader:
    """DataLoader over the memory-mapped cache: uint8 images and float labels (converted on the device).

    `start` counts images drawn (fixed-size batches), or with `poisson_rate` (Poisson batches of that
    sampling rate, for DP training, one process) steps taken. `units` (with `poisson_rate`): each row's patient
    number; whole patients are drawn and each batch carries its rows' patient numbers as a third tensor. `masks`:
    each image carries its mask as a last channel (`ImageMaskPairs`)."""
    if len(rows) == 0:
        raise DataError(f"{data.cache.path}: no training images for this group")
    dataset: torch.utils.data.Dataset = CachedImages(data.cache.path, rows, data.labels, masks)
    if masks:
        dataset = ImageMaskPairs(dataset)
    if units is not None:
        dataset = WithUnits(dataset, units)
    if poisson_rate is None:
        sampler: Sampler[list[int]] = ShardedBatches(len(rows), batch, info, seed, start)
    else:
        sampler = PoissonBatches(len(rows), poisson_rate, seed, start, units)
    shape = (data.cache.channels + masks, data.cache.size, data.cache.size)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=partial(_collate, shape=shape, k=data.labels.shape[1], units=units is not None),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # a private generator: creating the iterator must not draw from the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
    )
