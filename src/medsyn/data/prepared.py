"""Reading a prepared cache (written by `medsyn.data.cache.prepare`): memory-mapped images, labels, masks.

`PreparedDataset` opens the folder read-only; `CachedImages` is its torch view, which each DataLoader worker
opens on its own. Masks (`masks.npy`, uint8 (N, 1, S, S), 0 = background) exist where the dataset had them;
`has_mask` in index.csv says which rows hold one. Nothing outside the data layer reads them yet: the mask API
(`has_masks`, `mask_rows`, `masks_for`, `torch_dataset(..., masks=True)`) is for mask-to-image generation
and segmentation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsyn.errors import ConfigError, DataError

FORMAT_VERSION = 1


class PreparedDataset:
    """A prepared cache folder, opened read-only and memory-mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path}: not a prepared medsyn cache (no meta.json); run 'medsyn data prepare'")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_path}: corrupt meta.json ({exc})") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path}: cache format {self.meta.get('format_version')} is not {FORMAT_VERSION} "
                "(prepared by another medsyn version); prepare it again"
            )
        self.classes: list[str] = list(self.meta["classes"])
        self.size: int = int(self.meta["size"])
        self.channels: int = int(self.meta["channels"])
        dtypes = {"source": str, "patient_id": str, "split": str}
        self.index = pd.read_csv(
            self.path / "index.csv", dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in self.classes}
        )
        self.images = np.load(self.path / "images.npy", mmap_mode="r")
        mask_path = self.path / "masks.npy"
        self.masks = np.load(mask_path, mmap_mode="r") if mask_path.is_file() else None
        if len(self.images) != len(self.index):
            raise DataError(f"{self.path}: images.npy has {len(self.images)} rows but index.csv {len(self.index)}")
        self.labels: np.ndarray = self.index[self.classes].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def spec(self) -> str:
        return str(self.meta["spec"])

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split ('train', 'val', 'test'), or all rows."""
        if split is None:
            return np.arange(len(self.index))
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {split!r}; expected train, val or test")
        return np.flatnonzero(self.index["split"].to_numpy() == split)

    @property
    def has_masks(self) -> bool:
        """Whether any image of the cache has a mask."""
        return self.masks is not None and bool((self.index["has_mask"].to_numpy() == 1).any())

    @property
    def mask_labels(self) -> list[int]:
        """Label values present in the stored masks, 0 (background) included: [0, 1] for binary masks."""
        summary = self.meta.get("masks") or {}
        # caches prepared before masks were summarised stored binary masks only
        return list(summary.get("labels", [0, 1] if self.has_masks else []))

    def mask_rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split (or all rows) whose image has a mask."""
        rows = self.rows(split)
        return rows[self.index["has_mask"].to_numpy()[rows] == 1]

    def masks_for(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), 1, S, S) masks of `rows`, copied out of the memory map."""
        rows = self._masked(rows)
        assert self.masks is not None  # _masked refused rows without one
        return np.asarray(self.masks[rows])

    def _masked(self, rows: np.ndarray) -> np.ndarray:
        """`rows` as int64; DataError when one of them has no mask, since a zero mask would read as 'no lung'."""
        rows = np.asarray(rows, dtype=np.int64)
        without = rows[self.index["has_mask"].to_numpy()[rows] != 1]
        if len(without) or (self.masks is None and len(rows)):
            raise DataError(
                f"{self.path}: {len(without)} of {len(rows)} rows have no mask (first: {without[:3].tolist()}); "
                "take rows from mask_rows(), or prepare the set with ?masks=only"
            )
        return rows

    def torch_dataset(self, rows: np.ndarray | str | None = None, masks: bool = False) -> CachedImages:
        """Torch view of `rows` (a split name, row numbers, or all); with `masks`, items carry their mask and
        every row must have one."""
        if isinstance(rows, str) or rows is None:
            rows = self.mask_rows(rows) if masks else self.rows(rows)
        rows = self._masked(rows) if masks else np.asarray(rows)
        return CachedImages(self.path, rows, self.labels, masks)


class CachedImages(torch.utils.data.Dataset):
    """Torch view of some rows of a cache: (uint8 image (C,S,S), float32 labels (K,)), or with `masks`
    (uint8 image, uint8 mask (1,S,S), float32 labels).

    Holds only the path; each DataLoader worker opens its own memory maps (nothing large is pickled).
    Convert batches on the device with `to_signed` / `to_unit`, which is cheaper than per item.
    """

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, masks: bool = False) -> None:
        self.path, self.rows, self.labels, self.masks = path, rows, torch.from_numpy(labels[rows]), masks
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def _item(self, name: str, i: int) -> torch.Tensor:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return torch.from_numpy(np.array(self._arrays[name][self.rows[i]]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self.masks:
            return self._item("images", i), self._item("masks", i), self.labels[i]
        return self._item("images", i), self.labels[i]


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [-1, 1] (GAN convention)."""
    return x.float().div_(127.5).sub_(1.0)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] (classifier convention)."""
    return x.float().div_(255.0)
