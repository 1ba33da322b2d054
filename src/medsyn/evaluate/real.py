"""The real side of an evaluation: the prepared cache, its patient splits, and which images were members.

    real = open_real_data(spec_or_cache, opened_synthetic, size=None, cache=None, classes=None, out=OUT)

The real set is a prepared cache split by patient (prepared here from a spec when needed, with the split
seed of the generator's own training run when the synthetic folder's manifest names it, so that the
"training images" are the images the generator saw). Whether that holds is checked and recorded: a
different dataset or split seed makes the privacy checks' members the wrong images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.data.cache import PreparedDataset, prepare
from medsyn.data.spec import parse_spec
from medsyn.data.splits import select_classes
from medsyn.errors import ConfigError, MedsynError
from medsyn.evaluate.data import LabeledImages, RowView
from medsyn.train.config import TrainConfig
from medsyn.train.data import cache_dir_for


@dataclass
class Split:
    """One split of the real cache restricted to the evaluated classes."""

    images: RowView
    labels: np.ndarray
    patient_ids: np.ndarray

    def labeled(self, classes: list[str], name: str) -> LabeledImages:
        return LabeledImages(self.images, self.labels, self.patient_ids, classes, name=name)


@dataclass
class Members:
    """Which real training images the generator saw: `seen` over `ds.rows('train')` (None: all of them),
    whether that is known, and the note the report shows."""

    seen: np.ndarray | None
    known: bool
    note: str | None = None


@dataclass
class RealData:
    """Everything the stages need from the real set."""

    ds: PreparedDataset
    classes: list[str]
    splits: dict[str, Split]  # train / val / test
    held: Split  # val + test: patients the generator never saw
    members: Split  # the training images the generator saw (the privacy checks' members)
    member_info: Members
    notes: list[str] = field(default_factory=list)
    split_mismatch: str | None = None  # why the training split may not be the generator's (privacy is then n/a)

    def describe(self) -> dict[str, Any]:
        """metrics.json "data.real"."""
        ds = self.ds
        return {
            "dataset": ds.meta.get("name"),
            "spec": ds.spec,
            "cache": str(ds.path),
            "content_hash": ds.meta.get("content_hash"),
            "size": ds.size,
            "channels": ds.channels,
            "label_policy": ds.meta.get("label_policy", "n/a"),
            "split_seed": ds.meta.get("settings", {}).get("seed"),
            "splits": {
                name: {
                    "images": len(sp.labels),
                    "patients": int(len(np.unique(sp.patient_ids))),
                    "positives": {c: int((sp.labels[:, j] == 1).sum()) for j, c in enumerate(self.classes)},
                }
                for name, sp in self.splits.items()
            },
            "members": "all training images" if self.member_info.seen is None else
                       f"{int(self.member_info.seen.sum())} of {len(self.member_info.seen)} training images",
            "members_known": self.member_info.known,
        }  # fmt: skip


def _data_key(data: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """What identifies a dataset regardless of how it was written: kind, absolute location, options
    (the phantom's render size excluded: prepare adds it); a cache folder stands for its spec."""
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        data = PreparedDataset(path).spec
    spec = parse_spec(TrainConfig(data=data).resolved().data)
    options = tuple(sorted((k, v) for k, v in spec.options.items() if not (spec.kind == "phantom" and k == "size")))
    return spec.kind, spec.location, options


def _compare(ds: PreparedDataset, tc: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Notes on whether `ds` is the generator's training data (same data, split seed and size), and the
    reason its training split may not be the generator's (None when it is, or when nothing is recorded)."""
    if not tc.get("data"):
        return [], None
    notes, mismatch = [], None
    try:
        same = _data_key(str(tc["data"])) == _data_key(str(ds.path))
    except MedsynError:  # e.g. the generator's cache folder was moved or deleted since training
        notes.append(f"could not check that the generator's training data ({tc['data']}) is this real set")
    else:
        if not same:
            mismatch = (f"the generator was trained on {tc['data']}, but the real set is {ds.spec}: the privacy "
                        "checks' 'training images' are not the ones the generator saw")  # fmt: skip
            notes.append(mismatch)
    seed_used = ds.meta.get("settings", {}).get("seed")
    if seed_used is not None and int(seed_used) != int(tc.get("split_seed", 0)):
        text = (f"the real cache was split with seed {seed_used}, the generator's training with "
                f"{tc.get('split_seed', 0)}: training and held-out patients differ from the generator's")  # fmt: skip
        notes.append(text)
        mismatch = mismatch or text
    if tc.get("size") and int(tc["size"]) != ds.size:
        notes.append(f"the generator was trained at {tc['size']} px, the evaluation runs at {ds.size} px")
    return notes, mismatch


def _open(
    real: str, size: int | None, cache: str | Path | None, tc: Mapping[str, Any], default_size: Callable[[], int],
    out: Path, quiet: bool,
) -> PreparedDataset:  # fmt: skip
    path = Path(str(real)).expanduser()
    if (path / "meta.json").is_file():
        ds = PreparedDataset(path)
        if size is not None and size != ds.size:
            raise ConfigError(f"--size {size}, but the real cache {path} holds {ds.size} px images; drop --size")
        return ds
    size = size or tc.get("size") or default_size()
    split_seed = int(tc.get("split_seed", 0))
    root = cache or tc.get("cache") or out.absolute().parent / ".medsyn-cache"
    cfg = TrainConfig(data=str(real), size=int(size), split_seed=split_seed, cache=str(root)).resolved()
    return prepare(cfg.data, int(size), cache_dir_for(cfg, out), seed=split_seed, quiet=quiet)


def open_real(
    real: str, size: int | None, cache: str | Path | None, train_config: Mapping[str, Any] | None,
    default_size: Callable[[], int], out: Path, quiet: bool,
) -> tuple[PreparedDataset, list[str]]:  # fmt: skip
    """The real cache (prepared from a spec when needed) and notes on whether it matches the generator's
    training data (same data, split seed and size), which the privacy checks rely on."""
    tc = dict(train_config or {})
    ds = _open(real, size, cache, tc, default_size, out, quiet)
    return ds, _compare(ds, tc)[0]


def choose_classes(real: list[str], asked: list[str] | None, trained: list[str] | None) -> tuple[list[str], list[str]]:
    """The evaluated classes: those asked for, else the generator's training classes, else all; and a note."""
    if asked:
        unknown = [c for c in asked if c not in real]
        if unknown:
            raise ConfigError(f"class(es) {', '.join(unknown)} are not in the real set ({', '.join(real)})")
        return list(asked), []
    if trained:
        kept = [c for c in real if c in trained]
        if not kept:
            raise ConfigError(f"the generator was trained on {trained}, none of which is a real class {real}")
        dropped = [c for c in real if c not in kept]
        note = f"evaluated on the generator's training classes; not evaluated: {', '.join(dropped)}"
        return kept, [note] if dropped else []
    return list(real), []


def members(ds: PreparedDataset, train_config: Mapping[str, Any] | None) -> Members:
    """Which real training images the generator saw (see `Members`).

    A generator trained with `classes=` never saw training images positive only for other classes (the
    trainer leaves them out); counting them as members would dilute membership inference towards 0.5.
    When this cannot be told, all training images count as members and the result says so (`known` False).
    """
    if train_config is None:
        return Members(None, False, "the synthetic set does not record its generator's training data, so every real "
                                    "training image counts as a member; if the generator saw other images, the "
                                    "privacy checks compare against the wrong ones")  # fmt: skip
    trained = train_config.get("classes")
    if not trained or not set(ds.classes) - set(trained):
        return Members(None, True)
    table = ds.index.iloc[ds.rows("train")]
    try:
        kept, _ = select_classes(table, ds.classes, [c for c in ds.classes if c in trained])
    except MedsynError as exc:
        return Members(None, False, f"could not tell which training images a generator trained on {trained} saw "
                                    f"({exc}); every real training image counts as a member")  # fmt: skip
    seen = np.isin(table["row"].to_numpy(), kept["row"].to_numpy())
    if seen.all():
        return Members(None, True)
    return Members(seen, True, f"{int((~seen).sum())} real training images are positive only for classes the "
                               "generator was not trained on; it never saw them, so the privacy checks leave them "
                               "out of the training (member) set")  # fmt: skip


def split(ds: PreparedDataset, rows: np.ndarray, cols: list[int]) -> Split:
    ids = ds.index["patient_id"].to_numpy().astype(str)
    return Split(RowView(ds.images, rows), ds.labels[rows][:, cols], ids[rows])


def open_real_data(
    real: str | Path, train_config: Mapping[str, Any] | None, native_size: Callable[[], int], *, out: Path,
    size: int | None = None, cache: str | Path | None = None, classes: list[str] | None = None, quiet: bool = False,
) -> RealData:  # fmt: skip
    """The real cache, the evaluated classes, the patient splits and the member set, with their notes."""
    tc = dict(train_config or {})
    ds = _open(str(real), size, cache, tc, native_size, out, quiet)
    notes, mismatch = _compare(ds, tc)
    chosen, class_notes = choose_classes(ds.classes, classes, tc.get("classes"))
    info = members(ds, train_config)
    cols = [ds.classes.index(c) for c in chosen]
    splits = {name: split(ds, ds.rows(name), cols) for name in ("train", "val", "test")}
    held = split(ds, np.concatenate([ds.rows("val"), ds.rows("test")]), cols)
    seen = splits["train"] if info.seen is None else split(ds, ds.rows("train")[info.seen], cols)
    notes += class_notes + ([info.note] if info.note else [])
    return RealData(ds, chosen, splits, held, seen, info, notes, mismatch)
