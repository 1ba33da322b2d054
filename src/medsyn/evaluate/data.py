"""Image sets as the evaluation reads them: lazy row views over memmaps, labels with masks, patient ids.

    train = LabeledImages.from_prepared(ds, "train")      # images read batch by batch from the cache memmap
    for idx in batches(len(train), 64): x = as_unit_tensor(train.images[idx])

Images are (N, C, S, S), uint8 or float in [0, 1]; labels (N, K) are 0 / 1 / NaN (masked).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsyn.errors import DataError


class RowView:
    """Rows `rows` of an image array, read on demand: a prepared split of a memmap is never copied whole."""

    def __init__(self, array: Any, rows: np.ndarray) -> None:
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[self.rows[idx]])


class ConcatView:
    """Several image arrays seen as one (real + synthetic for augmentation) without concatenating them."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        # uint8 and float parts together are read as float32 in [0, 1] (uint8 parts divided by 255).
        self.dtype = np.dtype(np.uint8) if all(p.dtype == np.uint8 for p in self.parts) else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            part_images = np.asarray(self.parts[p][idx[sel] - self.offsets[p]])
            scale = part_images.dtype == np.uint8 and self.dtype != np.uint8
            out[sel] = part_images / np.float32(255) if scale else part_images
        return out


def check_images(images: Any, name: str = "images") -> Any:
    """Validate (N, C, S, S); torch tensors become numpy, arrays/memmaps/views pass through."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[0] == 0:
        raise DataError(f"{name} must be a non-empty array of shape (N, C, S, S), got shape {shape}")
    return images


def check_labels(labels: Any, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or len(labels) != n:
        raise DataError(f"{name} labels must have shape ({n}, K), got {labels.shape}")
    bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
    if bad.any():
        raise DataError(f"{name} labels must be 0, 1 or NaN (masked), found {labels[bad][0]!r}")
    return labels


def check_patient_ids(patient_ids: Any, n: int, name: str) -> np.ndarray | None:
    if patient_ids is None:
        return None
    ids = np.asarray(patient_ids).astype(str)
    if ids.shape != (n,):
        raise DataError(f"{name} patient ids must have shape ({n},), got {ids.shape}")
    return ids


@dataclass
class LabeledImages:
    """Images (N, C, S, S) uint8 or float in [0, 1], labels (N, K) 0/1/NaN, optional patient ids."""

    images: Any
    labels: np.ndarray
    patient_ids: np.ndarray | None = None
    classes: list[str] | None = None
    name: str = "data"

    def __post_init__(self) -> None:
        self.images = check_images(self.images, f"{self.name} images")
        self.labels = check_labels(self.labels, len(self.images), self.name)
        self.patient_ids = check_patient_ids(self.patient_ids, len(self.images), self.name)
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if len(self.classes) != self.labels.shape[1]:
                raise DataError(
                    f"{self.name}: {len(self.classes)} class names for {self.labels.shape[1]} label columns"
                )

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_prepared(cls, ds: Any, split: str) -> LabeledImages:
        """One split of a `medsyn.data.cache.PreparedDataset`, images read lazily from its memmap."""
        rows = np.asarray(ds.rows(split), dtype=np.int64)
        if len(rows) == 0:
            raise DataError(f"prepared dataset has no images in split {split!r}")
        table = ds.index.set_index("row") if "row" in ds.index else ds.index
        return cls(
            RowView(ds.images, rows),
            np.asarray(ds.labels)[rows],
            table.loc[rows, "patient_id"].to_numpy(),
            list(ds.classes),
            name=split,
        )


def as_labeled(data: LabeledImages | Sequence[Any], name: str) -> LabeledImages:
    """Accept a LabeledImages or a tuple (images, labels[, patient_ids[, classes]])."""
    if isinstance(data, LabeledImages):
        return data
    if not isinstance(data, Sequence) or not 2 <= len(data) <= 4:
        raise DataError(f"{name} must be LabeledImages or a tuple (images, labels[, patient_ids[, classes]])")
    return LabeledImages(*data, name=name)


def as_unit_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 -> float in [0, 1]; float must already lie in [0, 1] ([-1, 1] generator output is an error)."""
    if batch.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)
    if not np.issubdtype(batch.dtype, np.floating):
        raise DataError(f"images must be uint8 or float in [0, 1], got dtype {batch.dtype}")
    lo, hi = float(batch.min()), float(batch.max())
    if lo < -1e-3 or hi > 1 + 1e-3 or math.isnan(lo + hi):
        raise DataError(
            f"float images must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]; "
            "convert [-1, 1] images with (x + 1) / 2"
        )
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


def batches(n: int, size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    idx = np.arange(n) if order is None else order
    for start in range(0, n, size):
        yield idx[start : start + size]
