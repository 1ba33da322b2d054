"""Segmentation masks: reading mask files as labels, matching them to their image, resizing, summarising.

A mask is uint8 (H, W): 0 is background, 1..MAX_LABEL are labels (binary masks are 0/1; small multi-label
masks, e.g. 1 = right lung, 2 = left lung, 3 = heart, keep their values). A mask file is read as stored,
never rescaled to [0, 1]: a PNG of 0/1 values is a valid mask, not a black image. A file with exactly one
non-zero value (0/255, 0/65535, 1-bit) is binary and becomes 0/1. Anything else (in-between grey values
from JPEG compression or smoothing, colour, more than MAX_LABEL labels) is a MaskError (a DataError) naming the file:
thresholding it would silently invent a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsyn.data.images import fit_square
from medsyn.errors import DataError

MAX_LABEL = 8
_SAVE_HINT = f"save masks losslessly (PNG) as grey label values 0..{MAX_LABEL} or binary 0/255"


class MaskError(DataError):
    """A mask that cannot be used (missing, corrupt, not labels, not alignable with its image): `inspect`
    counts these apart from unreadable images; `prepare` treats both alike (stop, or skip with --skip-bad)."""


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file as uint8 (H, W) labels 0..MAX_LABEL; MaskError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: mask file not found")
    if path.suffix.lower() in (".dcm", ".dicom"):
        raise MaskError(f"{path}: DICOM masks are not supported; {_SAVE_HINT}")
    try:
        with Image.open(path) as img:
            img.load()
            # palette (P) indices are the labels of an indexed-colour label PNG; LA keeps its grey plane
            arr = np.asarray(img if img.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F", "LA")
                             else img.convert("RGB"))  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskError(f"{path}: unreadable or corrupt mask ({exc})") from None
    if arr.ndim == 3:  # LA: the grey plane; RGB: grey only when its channels agree
        if arr.shape[2] == 3 and not (arr == arr[..., :1]).all():
            raise MaskError(f"{path}: colour mask (its red, green and blue differ); {_SAVE_HINT}")
        arr = arr[..., 0]
    return _labels(arr, path)


def _labels(arr: np.ndarray, path: Path) -> np.ndarray:
    """Stored values -> labels: kept when all are in 0..MAX_LABEL, 0/1 when one non-zero value, else an error."""
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise MaskError(f"{path}: mask values are not integers; {_SAVE_HINT}")
    values = np.unique(arr)
    if values[0] < 0:
        raise MaskError(f"{path}: mask has negative values ({values[0]}); {_SAVE_HINT}")
    if values[-1] <= MAX_LABEL:
        return arr.astype(np.uint8)
    if np.count_nonzero(values) == 1:
        return (arr != 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    raise MaskError(
        f"{path}: mask holds {len(values)} distinct values ({shown}): neither binary (0 and one other value) "
        f"nor labels 0..{MAX_LABEL} (a JPEG or smoothed mask has in-between values); {_SAVE_HINT}"
    )


def match_image(mask: np.ndarray, image_shape: tuple[int, int], mask_name: str, image_name: str) -> np.ndarray:
    """The mask on the image's pixel grid.

    A mask of the image's size is returned as is. One of another size but the same aspect ratio (within a
    pixel: masks are often stored at a lower resolution) is scaled to the image's size by nearest neighbour,
    so that `pad` and `crop` later place it exactly where they place the image. Any other shape cannot be
    aligned with the image: MaskError naming both files.
    """
    (mh, mw), (ih, iw) = mask.shape, image_shape
    if (mh, mw) == (ih, iw):
        return mask
    if abs(mh - ih * mw / iw) > 1 or abs(mw - iw * mh / ih) > 1:
        raise MaskError(
            f"{mask_name}: mask is {mw}x{mh} px but its image {image_name} is {iw}x{ih} px "
            "(another aspect ratio: the mask cannot be aligned with the image)"
        )
    return np.asarray(Image.fromarray(mask).resize((iw, ih), Image.Resampling.NEAREST))


def fit_mask(mask: np.ndarray, size: int, fit: str) -> np.ndarray:
    """uint8 (1, size, size): the mask resized as `fit_square` resizes its image, by nearest neighbour so that
    labels stay labels (never averaged into in-between values)."""
    return fit_square(mask[None].astype(np.float32), size, fit, nearest=True).astype(np.uint8)


def label_counts(mask: np.ndarray) -> np.ndarray:
    """Pixels per label value 0..MAX_LABEL: what a worker sends back for `MaskStats` (small to pickle)."""
    return np.bincount(mask.ravel(), minlength=MAX_LABEL + 1)


@dataclass
class MaskStats:
    """Label values and foreground fractions over masks, added one mask at a time (as decoded)."""

    pixels: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LABEL + 1, np.int64))
    fractions: list[float] = field(default_factory=list)

    def add(self, counts: np.ndarray) -> None:
        """Add one mask's `label_counts`."""
        self.pixels += counts
        self.fractions.append(float(1.0 - counts[0] / counts.sum()))

    def summary(self) -> dict[str, Any]:
        """Masks counted, label values present, foreground fraction (mean/min/max) and empty masks."""
        if not self.fractions:
            return {"count": 0, "labels": [], "foreground": None, "empty": 0}
        f = np.asarray(self.fractions)
        foreground = {
            name: round(float(fn(f)), 4) for name, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))
        }
        return {"count": len(f), "labels": np.flatnonzero(self.pixels).tolist(), "foreground": foreground,
                "empty": int((f == 0).sum())}  # fmt: skip


def summarise(masks: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> dict[str, Any]:
    """`MaskStats.summary` of the masks at `rows` of an (N, 1, S, S) array, read a chunk at a time."""
    stats = MaskStats()
    for start in range(0, len(rows), chunk):
        for mask in masks[rows[start : start + chunk]]:
            stats.add(label_counts(mask))
    return stats.summary()


def describe(summary: dict[str, Any]) -> str:
    """One line for the CLI: label values and foreground fraction, or that no mask was read."""
    if not summary["count"]:
        return "no mask read"
    fg = summary["foreground"]
    line = (
        f"labels {', '.join(map(str, summary['labels']))}; foreground {fg['mean']:.1%} of the pixels on average "
        f"(min {fg['min']:.1%}, max {fg['max']:.1%}) over {summary['count']} masks"
    )
    return line + (f"; {summary['empty']} empty" if summary["empty"] else "")
