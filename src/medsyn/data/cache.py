"""The prepared cache: every image decoded and resized once into a uint8 memory-mapped array.

Layout of a cache folder (written under a temporary name, renamed only when complete):
    images.npy   uint8 (N, C, S, S), NumPy format, opened with mmap_mode='r' (RAM does not grow with N)
    masks.npy    uint8 (N, 1, S, S), only when the dataset has masks: labels 0..8 (0 = background; binary
                 masks 0/1), resized by nearest neighbour with the image's fit; all 0 for an image without
    index.csv    row, source, patient_id, split, has_mask, one column per class (1 / 0 / blank = masked)
    meta.json    settings, classes, counts, label policy, mask summary, skipped files, content hash

The reader, `PreparedDataset`, lives in `medsyn.data.prepared` and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from medsyn import __version__
from medsyn.data.adapters import open_dataset
from medsyn.data.base import Source
from medsyn.data.images import FITS, fit_square
from medsyn.data.masks import MaskStats, fit_mask, label_counts, summarise
from medsyn.data.parallel import default_workers, map_images, worker_source
from medsyn.data.prepared import FORMAT_VERSION, CachedImages, PreparedDataset, to_signed, to_unit
from medsyn.data.spec import DatasetSpec, parse_spec
from medsyn.data.splits import assign_splits, cap_per_class, check_no_leak, select_classes
from medsyn.errors import ConfigError, DataError
from medsyn.io import atomic_dir, write_json_atomic
from medsyn.progress import progress_bar

__all__ = ["CachedImages", "PreparedDataset", "PrepareSettings", "prepare", "subset", "to_signed", "to_unit"]


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that determines a cache's content; its hash decides whether a prepare is a no-op."""

    spec: str
    size: int
    fit: str = "pad"
    val: float = 0.1
    test: float = 0.2
    seed: int = 0
    classes: tuple[str, ...] | None = None
    normal: str | None = None
    cap: int | None = None
    skip_bad: bool = False

    def key(self) -> str:
        text = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(settings: PrepareSettings) -> tuple[Source, pd.DataFrame, list[str]]:
    """Open the source and decide which rows go where (labels, selection, splits, caps); no pixels."""
    src = open_dataset(settings.spec)
    table, classes = src.table.copy(), list(src.classes)
    if settings.classes or settings.normal:
        table, classes = select_classes(table, classes, list(settings.classes or classes), settings.normal)
    if table.empty:
        raise DataError(f"{settings.spec}: no images to prepare")
    table["split"] = assign_splits(table, classes, settings.val, settings.test, settings.seed)
    if settings.cap:
        table = cap_per_class(table, classes, settings.cap, settings.seed)
    check_no_leak(table)
    return src, table, classes


def _decode(args: tuple[int, int, str]) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Decode, resize and quantise one image (and mask); returns an error line instead of raising."""
    i, size, fit = args
    src = worker_source()
    try:
        img, mask = src.read_with_mask(i)
    except DataError as exc:
        return None, None, str(exc)
    img_u8 = np.round(fit_square(img, size, fit) * 255.0).astype(np.uint8)
    return img_u8, None if mask is None else fit_mask(mask, size, fit), ""


def _hash_files(*paths: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _counts(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        out[split] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "positives": {c: int((part[c] > 0).sum()) for c in classes},
            "masked": {c: int(part[c].isna().sum()) for c in classes if part[c].isna().any()},
        }
    return out


def prepare(
    spec: str | DatasetSpec,
    size: int,
    out: str | os.PathLike[str],
    *,
    fit: str = "pad",
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    classes: list[str] | None = None,
    normal: str | None = None,
    cap: int | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    force: bool = False,
    quiet: bool = False,
) -> PreparedDataset:
    """Decode `spec` once at `size` px into a cache folder `out`; a repeat with the same settings is a no-op.

    `workers` decoding processes (default: up to 8, one per core; 0 decodes in this process).
    Corrupt images raise DataError unless `skip_bad`, which skips them and records them in meta.json.
    """
    if not 8 <= size <= 2048:
        raise ConfigError(f"image size {size} must be between 8 and 2048 px")
    if fit not in FITS:
        raise ConfigError(f"--fit must be one of {', '.join(FITS)}, got {fit!r}")
    parsed = parse_spec(spec)
    if parsed.kind == "phantom" and "size" not in parsed.options:
        parsed = parsed.with_options(size=size)  # render at the target size instead of resampling
    settings = PrepareSettings(
        str(parsed), size, fit, val, test, seed, tuple(classes) if classes else None, normal, cap, skip_bad
    )
    out = Path(out)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        existing = PreparedDataset(out)
        if existing.meta.get("settings_key") == settings.key():
            return existing
        if not force:
            raise DataError(
                f"{out} holds a cache prepared with other settings ({existing.meta.get('spec')}, "
                f"size {existing.size}); pass --force to replace it or choose another --out"
            )
    elif out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out} exists and is not a medsyn cache; choose another --out or pass --force")

    src, table, class_names = _plan(settings)
    n, c = len(table), src.channels
    has_masks = bool((table["mask"] != "").any())
    if workers is None:
        workers = default_workers(n)
    skipped: list[dict[str, str]] = []
    with atomic_dir(out) as tmp:
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, size, size))
        masks = (
            open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, 1, size, size)) if has_masks else None
        )
        has_mask = np.zeros(n, bool)
        mask_stats = MaskStats()
        src_rows = _source_rows(src, table)
        jobs = ((int(r), size, fit) for r in src_rows)
        keep = np.ones(n, bool)
        with progress_bar(f"prepare {parsed.kind} {size}px", total=n, quiet=quiet) as advance:
            for pos, (img, mask, err) in enumerate(map_images(src, _decode, jobs, workers)):
                if err:
                    if not skip_bad:
                        raise DataError(f"{err} (pass --skip-bad to skip and count corrupt images)")
                    keep[pos] = False
                    skipped.append({"source": str(table["source"].iat[pos]), "error": err})
                else:
                    images[pos] = img
                    if masks is not None and mask is not None:
                        masks[pos], has_mask[pos] = mask, True
                        mask_stats.add(label_counts(mask))
                advance(1)
        if not keep.all():
            images, masks = _compact(tmp, images, masks, keep)
        table = table.loc[keep].reset_index(drop=True)
        images.flush()
        if masks is not None:
            masks.flush()
        index = table[["source", "patient_id", "split"]].copy()
        index.insert(0, "row", np.arange(len(table)))
        index["has_mask"] = has_mask[keep].astype(int)
        for cl in class_names:
            index[cl] = table[cl].to_numpy()
        index.to_csv(tmp / "index.csv", index=False, float_format="%g")
        if index.empty:
            raise DataError(f"{parsed}: every image was unreadable; nothing to prepare")
        files = [tmp / "images.npy", tmp / "index.csv"] + ([tmp / "masks.npy"] if masks is not None else [])
        meta = {
            "format_version": FORMAT_VERSION,
            "medsyn_version": __version__,
            "spec": str(parsed),
            "source_format": parsed.kind,
            "name": src.name,
            "classes": class_names,
            "size": size,
            "channels": c,
            "fit": fit,
            "resize": f"aspect kept; {fit}: "
            + (
                "long side to size, short side centred on black padding"
                if fit == "pad"
                else "short side to size, centre crop"
            )
            + "; Lanczos antialiasing",
            "settings": asdict(settings),
            "settings_key": settings.key(),
            "label_policy": src.info.get("uncertainty_policy", "n/a"),
            "negative_class": src.info["negative_class"],
            "source_info": src.info,
            "counts": _counts(table, class_names),
            "skipped": {"count": len(skipped), "files": skipped[:50]},
            "content_hash": _hash_files(*files),
        }
        if masks is not None:  # of the stored squares: padding counts as background
            meta["masks"] = {**mask_stats.summary(), "only": bool(src.info["masks"]["only"])}
        write_json_atomic(tmp / "meta.json", meta)
        del images, masks
    return PreparedDataset(out)


def _source_rows(src: Source, table: pd.DataFrame) -> np.ndarray:
    """Row numbers in `src.table` for each planned row (selection and caps drop rows, so map by source)."""
    position = pd.Series(np.arange(len(src.table)), index=src.table["source"].to_numpy())
    position = position[~position.index.duplicated()]
    return position.loc[table["source"].to_numpy()].to_numpy()


def _compact(tmp: Path, images: np.memmap, masks: np.memmap | None, keep: np.ndarray) -> tuple[Any, Any]:
    """Rewrite the arrays without the skipped rows (rare path: only with --skip-bad)."""
    out = []
    for name, arr in (("images", images), ("masks", masks)):
        if arr is None:
            out.append(None)
            continue
        new = open_memmap(tmp / f"{name}.tmp.npy", mode="w+", dtype=np.uint8, shape=(int(keep.sum()), *arr.shape[1:]))
        kept = np.flatnonzero(keep)
        for start in range(0, len(kept), 4096):
            new[start : start + 4096] = arr[kept[start : start + 4096]]
        new.flush()
        del arr
        os.replace(tmp / f"{name}.tmp.npy", tmp / f"{name}.npy")
        out.append(np.load(tmp / f"{name}.npy", mmap_mode="r+"))
    return out[0], out[1]


def subset(
    ds: PreparedDataset, rows: np.ndarray, classes: list[str], out: str | os.PathLike[str], quiet: bool = True
) -> PreparedDataset:
    """A new cache with `rows` of `ds` (their splits kept) and the label columns `classes`.

    For sweeps that vary the training set while the validation and test patients stay fixed: a fresh
    `prepare` with other classes or caps would re-split the patients. A repeat with the same rows is a no-op.
    """
    rows = np.asarray(rows, dtype=np.int64)
    unknown = [c for c in classes if c not in ds.classes]
    if unknown:
        raise ConfigError(f"unknown class(es) {', '.join(unknown)}; {ds.path} has {', '.join(ds.classes)}")
    if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(ds):
        raise ConfigError(f"subset of {ds.path}: rows must be non-empty and within 0..{len(ds) - 1}")
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{ds.meta.get('content_hash')}|{'|'.join(classes)}|".encode())
    h.update(rows.tobytes())
    key = h.hexdigest()
    out = Path(out)
    if (out / "meta.json").is_file():
        existing = PreparedDataset(out)
        if existing.meta.get("settings_key") == key:
            return existing
        raise DataError(f"{out} holds another cache; choose another folder")
    index = ds.index.iloc[rows][["source", "patient_id", "split", "has_mask", *classes]].reset_index(drop=True)
    index.insert(0, "row", np.arange(len(index)))
    with atomic_dir(out) as tmp:
        files = [tmp / "images.npy", tmp / "index.csv"]
        arrays = [("images", ds.images)] + ([("masks", ds.masks)] if ds.masks is not None else [])
        for name, src in arrays:
            dst = open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(len(rows), *src.shape[1:]))
            with progress_bar(f"subset {name}", total=len(rows), quiet=quiet) as advance:
                for start in range(0, len(rows), 4096):
                    dst[start : start + 4096] = src[rows[start : start + 4096]]
                    advance(len(rows[start : start + 4096]))
            dst.flush()
            del dst
        if ds.masks is not None:
            files.append(tmp / "masks.npy")
        index.to_csv(tmp / "index.csv", index=False, float_format="%g")
        meta = {
            **ds.meta,
            "classes": list(classes),
            "counts": _counts(index, list(classes)),
            "settings_key": key,
            "derived_from": {"cache": str(ds.path), "content_hash": ds.meta.get("content_hash"), "rows": len(rows)},
            "skipped": {"count": 0, "files": []},
            "content_hash": _hash_files(*files),
        }
        if ds.masks is not None:
            in_subset = np.flatnonzero(index["has_mask"].to_numpy() == 1)
            meta["masks"] = {
                **ds.meta.get("masks", {}),
                **summarise(np.load(tmp / "masks.npy", mmap_mode="r"), in_subset),
            }
        write_json_atomic(tmp / "meta.json", meta)
    return PreparedDataset(out)
