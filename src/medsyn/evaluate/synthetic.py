"""Load a synthetic set as uint8 arrays with labels aligned to the REAL set's classes.

Accepted inputs:

* a folder written by `medsyn generate` (found by its manifest.json): its labels file is read in the
  layout generate wrote (nih / chexpert / folder / csv), and the run's training settings (classes, size,
  split seed, data) are kept so the evaluation can check it uses the generator's own training split;
* a folder holding `labels.csv` (path, optional patient_id, 0/1 class columns), as other tools write;
* a prepared medsyn cache folder (meta.json), or any dataset spec (`folder:DIR`, `csv:FILE`, `nih:DIR`,
  `phantom?seed=1`, ...);
* in Python, a tuple `(images, labels, classes)` of arrays (uint8, or float in [0, 1]).

Labels are matched to the real classes by name (case, spaces and underscores ignored). A folder class
named `A+B` (how `medsyn generate` stores multi-label images in the folder layout) is positive for A and
B; the negative class (the manifest's `negative_class`, e.g. `normal` for brain CT; `No Finding` when the
manifest does not name one) means "no positive label" when the real set has no class of that name. Synthetic classes with
positive images that the real set lacks are an error; columns without any positive are ignored, with a
note. Images of another size are resized exactly as `medsyn data prepare` resizes (aspect kept, padded,
Lanczos), and grey/colour mismatches are converted; both are stated in the returned notes.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image

from medsyn.data.adapters import open_dataset
from medsyn.data.adapters.common import FileSource
from medsyn.data.adapters.csvfile import open_csv
from medsyn.data.base import Source, make_table
from medsyn.data.cache import PreparedDataset
from medsyn.data.images import fit_square
from medsyn.data.masks import fit_mask
from medsyn.data.phantom import PhantomSource
from medsyn.data.spec import parse_spec
from medsyn.errors import DataError, SpecError
from medsyn.progress import progress_bar

NO_FINDING = "No Finding"
"""The negative group's name in reports when a synthetic set's manifest does not give its `negative_class`."""
NEGATIVE_DEFAULTS = (NO_FINDING, "normal")
"""Names read as "no positive label" when no manifest names the negative class (`generate` uses both)."""
MANIFEST_FORMAT = "medsyn-synthetic"
LAYOUT_SPECS = {"nih": "nih:{dir}", "chexpert": "chexpert:{dir}?view=all", "folder": "folder:{dir}"}
MEMMAP_BYTES = 1 << 30
"""Synthetic sets larger than this are decoded into a memory-mapped scratch file instead of RAM."""


@dataclass
class SyntheticInput:
    """A synthetic set opened (label table read) but not decoded."""

    source: Source
    kind: str  # medsyn-generate | labels.csv | cache | spec | arrays
    location: str
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def negative_class(self) -> str:
        """The name of the "no positive label" group in this set's labels (the manifest's, else No Finding)."""
        return str((self.manifest or {}).get("negative_class") or NO_FINDING)

    @property
    def train_config(self) -> dict[str, Any] | None:
        """The generator's training settings (medsyn generate sets only)."""
        return (self.manifest or {}).get("train_config")

    def native_size(self) -> int:
        """Long side of the first image, in pixels (what the set would be evaluated at by default)."""
        return max(self.source.read_image(0).shape[1:])


@dataclass
class SyntheticSet:
    """Decoded synthetic images and labels over `classes` (the evaluated real classes)."""

    images: np.ndarray  # uint8 (N, C, S, S), in RAM or a memmap
    labels: np.ndarray  # float32 (N, K): 1 / 0 / NaN (not labelled for that class)
    classes: list[str]
    kind: str
    location: str
    manifest: dict[str, Any] | None
    notes: list[str]
    negative_class: str = NO_FINDING
    masks: np.ndarray | None = None  # uint8 (N, 1, S, S) labels 0..L when the set carries masks (twostage)
    has_mask: np.ndarray | None = None  # bool (N,): which images have one

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for metrics.json and the report."""
        manifest = self.manifest or {}
        return {
            "location": self.location,
            "kind": self.kind,
            "images": len(self),
            "size": int(self.images.shape[-1]),
            "channels": int(self.images.shape[1]),
            "positives": {c: int(np.nansum(self.labels[:, j] == 1)) for j, c in enumerate(self.classes)},
            "unlabelled": {c: int(np.isnan(self.labels[:, j]).sum()) for j, c in enumerate(self.classes)
                           if np.isnan(self.labels[:, j]).any()},
            "generator": {k: manifest[k] for k in ("model", "mode", "seed", "generators", "medsyn_version")
                          if k in manifest} or None,
            "training": manifest.get("training"),  # steps / images seen / stop reason; None for older sets
            "differential_privacy": manifest.get("differential_privacy"),  # epsilon, delta of DP training
            "negative_class": self.negative_class,
            "privacy_filter": manifest.get("privacy_filter"),
            "masks": None if self.has_mask is None else int(self.has_mask.sum()),
            "notes": self.notes,
        }  # fmt: skip


class ArraySource(Source):
    """In-memory images (uint8 or float in [0, 1]) as a Source, so arrays and caches load like files."""

    def __init__(self, name: str, images: Any, labels: np.ndarray, classes: list[str]) -> None:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4 or shape[0] == 0:
            raise DataError(f"{name}: synthetic images must be a non-empty (N, C, H, W) array, got shape {shape}")
        labels = np.asarray(labels, dtype=np.float32).reshape(len(images), -1)
        if labels.shape[1] != len(classes):
            raise DataError(f"{name}: {labels.shape[1]} label columns for {len(classes)} class names")
        rows = {"source": [f"{name}[{i}]" for i in range(len(images))], "patient_id": "", "split": "", "mask": ""}
        rows.update({c: labels[:, j] for j, c in enumerate(classes)})
        super().__init__(name, list(classes), make_table(rows, list(classes)), int(shape[1]))
        self.images = images

    def read_image(self, i: int) -> np.ndarray:
        img = np.asarray(self.images[i])
        if img.dtype == np.uint8:
            return img.astype(np.float32) / 255.0
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise DataError(f"{self.name}: synthetic image {i} contains NaN/inf pixel values")
        if img.min() < -1e-3 or img.max() > 1 + 1e-3:
            raise DataError(
                f"{self.name}: float synthetic images must lie in [0, 1], image {i} spans "
                f"[{img.min():.3g}, {img.max():.3g}]; convert [-1, 1] output with (x + 1) / 2"
            )
        return np.clip(img, 0.0, 1.0)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest.json ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _generated_spec(folder: Path, manifest: dict[str, Any]) -> str:
    layout = manifest.get("layout", "csv")
    masks = (manifest.get("masks") or {}).get("dir")
    if layout == "folder" and masks:  # a csv layout names each image's mask in its `mask` column
        return f"folder:{folder}?mask_dir={folder / str(masks)}"
    if layout in LAYOUT_SPECS:
        return LAYOUT_SPECS[layout].format(dir=folder)
    return _csv_spec(folder / str(manifest.get("labels_file") or "labels.csv"))


def _csv_spec(labels: Path) -> str:
    """`csv:` for a labels file; one without label columns whose images have masks is an image + mask set,
    which the csv reader accepts only as such (`?masks=only`)."""
    spec = parse_spec(f"csv:{labels}")
    raw = open_csv(spec)
    if not raw.classes and (raw.table["mask"] != "").any():
        spec = spec.with_options(masks="only")
    return str(spec)


def open_synthetic(synthetic: str | os.PathLike[str] | tuple[Any, ...] | SyntheticInput) -> SyntheticInput:
    """Open a synthetic set (see the module docstring for the accepted forms); reads labels, no pixels."""
    if isinstance(synthetic, SyntheticInput):
        return synthetic
    if isinstance(synthetic, tuple):
        if len(synthetic) != 3:
            raise DataError("synthetic arrays must be a tuple (images, labels, classes)")
        images, labels, classes = synthetic
        return SyntheticInput(ArraySource("arrays", images, labels, [str(c) for c in classes]), "arrays", "arrays")
    text = str(synthetic)
    folder = Path(text).expanduser()
    if folder.is_dir():
        manifest = _read_manifest(folder)
        if manifest is not None:
            src = open_dataset(_generated_spec(folder, manifest))
            return SyntheticInput(src, "medsyn-generate", str(folder), manifest)
        if (folder / "meta.json").is_file():
            ds = PreparedDataset(folder)
            return SyntheticInput(ArraySource(ds.spec, ds.images, ds.labels, ds.classes), "cache", str(folder))
        if (folder / "labels.csv").is_file():
            return SyntheticInput(open_dataset(_csv_spec(folder / "labels.csv")), "labels.csv", str(folder))
        raise DataError(
            f"{folder}: not a synthetic set: no manifest.json (medsyn generate), labels.csv or meta.json; "
            f"pass a spec such as folder:{folder} or csv:FILE"
        )
    try:
        spec = parse_spec(text)
    except SpecError:
        raise DataError(f"{text}: synthetic set not found (not a folder, and not a dataset spec)") from None
    return SyntheticInput(open_dataset(spec), "spec", str(spec))


# ---------------------------------------------------------------------------------------- labels


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _parts(name: str) -> list[str]:
    """The classes a synthetic label names: 'A+B' (a folder of a label combination) names A and B."""
    return [_norm(p) for p in name.split("+")]


def align_labels(
    syn_classes: list[str],
    syn_labels: np.ndarray,
    classes: list[str],
    exclusive: bool,
    note_ignored: bool = True,
    known: list[str] | None = None,
    negative: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Synthetic labels (N, Ks) mapped onto `classes` (N, K), and notes.

    `negative`: the synthetic set's name for "no positive label" (ignored as a column unless a real class);
    None (no manifest says): any of NEGATIVE_DEFAULTS.

    `known`: every class of the real set when only some (`classes`) are evaluated: a synthetic column of a
    known class that is not evaluated is left out, not refused.

    `exclusive`: the source gives each image one class (a folder per class), so a class without a
    folder is a negative (0); otherwise a class the synthetic set does not label is NaN (masked).
    `note_ignored=False`: empty extra columns are expected (a `medsyn generate` label file always has
    every column of its format, e.g. all 14 NIH findings), so ignoring them is not worth a note.
    """
    index = {_norm(c): j for j, c in enumerate(classes)}
    negatives = {_norm(n) for n in ([negative] if negative else NEGATIVE_DEFAULTS)}
    real = index.keys() | {_norm(c) for c in known or ()}
    out = np.full((len(syn_labels), len(classes)), 0.0 if exclusive else np.nan, dtype=np.float32)
    covered: set[int] = set()
    unknown, ignored = [], []
    for s, name in enumerate(syn_classes):
        col = syn_labels[:, s]
        parts = _parts(name)
        if all(p in real for p in parts) and any(p in index for p in parts):
            for p in (p for p in parts if p in index):
                j = index[p]
                if j in covered or exclusive:  # several sources for one class (A, A+B): positive wins
                    out[:, j] = np.where(col == 1, 1.0, out[:, j])
                else:
                    out[:, j] = col
                covered.add(j)
        elif _norm(name) in negatives or not np.nansum(col == 1) or all(p in real for p in parts):
            ignored.append(name)
        else:
            unknown.append(f"{name} ({int(np.nansum(col == 1))} images)")
    if unknown:
        raise DataError(
            f"synthetic class(es) {', '.join(unknown)} are not in the real set (classes: {', '.join(known or classes)}); "
            "evaluate against real data with these classes or drop those images"
        )
    notes = []
    dropped = [c for c in ignored if _norm(c) not in negatives and not all(p in real for p in _parts(c))]
    if dropped and note_ignored:
        notes.append(f"synthetic label columns not in the real set and without positives were ignored: {', '.join(dropped)}")
    missing = [classes[j] for j in range(len(classes)) if j not in covered]
    if missing:
        notes.append(
            f"the synthetic set has no labels for {', '.join(missing)}: "
            + ("its images count as negatives (one class per folder)" if exclusive
               else "masked out of TSTR training; their TSTR AUROC shows an untrained output")
        )  # fmt: skip
    return out, notes


# ---------------------------------------------------------------------------------------- pixels


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 3 and channels == 1:
        return (img * np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]).sum(0, keepdims=True)
    if img.shape[0] == 1 and channels == 3:
        return np.repeat(img, 3, axis=0)
    raise DataError(f"synthetic images have {img.shape[0]} channels; cannot convert to {channels}")


def _file_channels(src: Source) -> int | None:
    """Channels the first image file has on disk (FileSource converts on read, so look before)."""
    if not isinstance(src, FileSource) or src.table.empty:
        return None
    path = src.table["source"].iat[0]
    if Path(path).suffix.lower() in (".dcm", ".dicom"):
        return 1
    try:
        with Image.open(path) as img:
            return 3 if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P", "LAB", "HSV") else 1
    except OSError as exc:
        raise DataError(f"{path}: unreadable synthetic image ({exc})") from None


def _decode(
    src: Source, size: int, channels: int, fit: str, out: np.ndarray, quiet: bool, masks: np.ndarray | None = None
) -> tuple[int, set[tuple[int, int]]]:
    """Decode every image into `out` (uint8), and each one's mask into `masks` when given (nearest neighbour,
    placed as its image is); returns how many images were resized and their native sizes."""
    threaded = isinstance(src, FileSource)
    resized, shapes = 0, set()

    def one(i: int) -> tuple[np.ndarray, tuple[int, int]]:
        img, mask = src.read_with_mask(i) if masks is not None else (src.read_image(i), None)
        img = _to_channels(img, channels)
        native = (int(img.shape[1]), int(img.shape[2]))
        if mask is not None:
            masks[i] = fit_mask(mask, size, fit)
        if native != (size, size):
            img = fit_square(img, size, fit)
        return np.round(img * 255.0).astype(np.uint8), native

    with progress_bar(f"load synthetic {size}px", total=len(src), quiet=quiet) as advance, ThreadPoolExecutor(
        min(8, os.cpu_count() or 1) if threaded else 1
    ) as pool:
        for start in range(0, len(src), 256):
            idx = range(start, min(start + 256, len(src)))
            for i, (img, native) in zip(idx, pool.map(one, idx), strict=True):
                out[i] = img
                if native != (size, size):
                    resized += 1
                    shapes.add(native)
            advance(len(idx))
    return resized, shapes


def _uint8_array(shape: tuple[int, ...], scratch: Path | None, name: str) -> np.ndarray:
    """A zeroed uint8 array to decode into: memory-mapped under `scratch` when larger than `MEMMAP_BYTES`."""
    if scratch is not None and np.prod(shape) > MEMMAP_BYTES:
        scratch.mkdir(parents=True, exist_ok=True)
        return open_memmap(scratch / name, mode="w+", dtype=np.uint8, shape=shape)
    return np.zeros(shape, dtype=np.uint8)


MIN_SYNTHETIC = 20
"""Fewest synthetic images evaluate accepts: FID needs 10, PRDC k+1 = 6, membership inference 10, and
TSTR training a few batches; below 20 no number in the report means anything."""


def load_synthetic(
    synthetic: str | os.PathLike[str] | tuple[Any, ...] | SyntheticInput,
    classes: list[str],
    size: int,
    channels: int,
    *,
    scratch: Path | None = None,
    quiet: bool = False,
    fit: str = "pad",
    known: list[str] | None = None,
) -> SyntheticSet:
    """Decode a synthetic set at `size` px with `channels`, labels aligned to `classes` (see module doc).

    `fit`: how images of another size are squared, as the real cache was (`pad` or `crop`). `known`: all
    classes of the real set, when `classes` is a selection of them (see `align_labels`).

    `scratch`: a folder for memory-mapped image (and mask) files when the set exceeds `MEMMAP_BYTES` (the caller
    deletes it); without it such sets are decoded into RAM.
    """
    opened = open_synthetic(synthetic)
    src = opened.source
    notes = list(opened.notes)
    if len(src) < MIN_SYNTHETIC:
        raise DataError(
            f"{opened.location}: {len(src)} synthetic images; evaluation needs at least {MIN_SYNTHETIC} "
            "(FID needs 10, PRDC 6, membership inference 10, and TSTR training more); generate more"
        )
    if isinstance(src, PhantomSource) and "size" not in parse_spec(opened.location).options and src.size != size:
        src = open_dataset(parse_spec(opened.location).with_options(size=size))  # render at size, no resampling
    exclusive = src.info.get("format") == "folder"
    labels, label_notes = align_labels(
        list(src.classes), src.labels(), classes, exclusive, note_ignored=opened.kind != "medsyn-generate", known=known,
        negative=(opened.manifest or {}).get("negative_class"),
    )
    notes += label_notes
    native_c = _file_channels(src)
    if isinstance(src, FileSource):
        src.channels = channels  # the reader converts grey/colour itself
    if (native_c or src.channels) != channels:
        notes.append(
            f"synthetic images have {native_c or src.channels} channel(s), the real set {channels}: "
            + ("converted to grey (luminance 0.299 R + 0.587 G + 0.114 B)" if channels == 1
               else "grey repeated to 3 channels")
        )  # fmt: skip
    images = _uint8_array((len(src), channels, size, size), scratch, "synthetic-images.npy")
    has_mask = src.table["mask"].astype(str).to_numpy() != "" if "mask" in src.table else np.zeros(len(src), bool)
    masks = _uint8_array((len(src), 1, size, size), scratch, "synthetic-masks.npy") if has_mask.any() else None
    try:
        resized, shapes = _decode(src, size, channels, fit, images, quiet, masks)
    except (OSError, ValueError) as exc:
        raise DataError(f"{opened.location}: cannot decode the synthetic images ({exc})") from None
    if resized:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(shapes)[:3]) + (", ..." if len(shapes) > 3 else "")
        notes.append(
            f"{resized} of {len(src)} synthetic images were not {size}x{size} px ({sizes}): resized to {size} px "
            f"as the real cache was (aspect kept, {'padded' if fit == 'pad' else 'centre-cropped'}, Lanczos)"
        )
    return SyntheticSet(images, labels, list(classes), opened.kind, opened.location, opened.manifest, notes,
                        opened.negative_class, masks, has_mask if masks is not None else None)  # fmt: skip
