"""The record type every adapter yields, and the `Source` interface: a table of items plus a reader.

A `Source` is lazy: building it reads only the label files, so opening CheXpert (224k images) is cheap.
Images are read one at a time by `read_image`, which `medsyn data prepare` calls once per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medsyn.data.masks import match_image

# Columns every source table has, in addition to one float column per class.
BASE_COLUMNS = ("source", "patient_id", "split", "mask")


@dataclass
class Record:
    """One image with its labels.

    image: float32 in [0, 1], shape (C, H, W).
    labels: float32 multi-hot over `Source.classes`; NaN marks a label masked out of loss and metrics
        (CheXpert uncertain labels under the `ignore` policy).
    patient_id: never empty; adapters without patient ids fall back to the image's own id and say so.
    mask: optional uint8 (H, W) segmentation mask (e.g. lungs) on the image's pixel grid: 0 background,
        1..MAX_LABEL labels (binary masks 0/1; see `medsyn.data.masks`).
    """

    image: np.ndarray
    labels: np.ndarray
    patient_id: str
    source: str
    mask: np.ndarray | None = None
    split: str = ""


@dataclass
class Source:
    """A dataset on disk, read lazily.

    classes: empty only for an image+mask set without labels (`?masks=only`; see `open_dataset`).
    table: one row per image with columns `source` (path or id), `patient_id`, `split` (official split
        name or ''), `mask` (mask path or id, '' for none), then one float column per class (1, 0, or
        NaN = masked).
    info: facts worth recording (uncertainty policy, rows left out and why, patient-id fallbacks).
    """

    name: str
    classes: list[str]
    table: pd.DataFrame
    channels: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def read_image(self, i: int) -> np.ndarray:
        """Image `i` as float32 (C, H, W) in [0, 1]; raises DataError naming the file when unreadable."""
        raise NotImplementedError

    def read_mask(self, i: int) -> np.ndarray | None:
        """Mask of image `i` as uint8 (H, W) labels (0 background), or None; DataError naming the file."""
        return None

    def read_with_mask(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image `i` and its mask on the image's pixel grid (`masks.match_image`): what `prepare` stores and
        `inspect` checks, so both refuse the same mismatched pairs."""
        image = self.read_image(i)
        mask = self.read_mask(i)
        if mask is not None:
            mask = match_image(mask, image.shape[1:], self.table["mask"].iat[i], self.table["source"].iat[i])
        return image, mask

    def labels(self) -> np.ndarray:
        return self.table[self.classes].to_numpy(dtype=np.float32)

    def __getitem__(self, i: int) -> Record:
        row = self.table.iloc[i]
        image, mask = self.read_with_mask(i)
        return Record(
            image=image,
            labels=row[self.classes].to_numpy(dtype=np.float32),
            patient_id=str(row["patient_id"]),
            source=str(row["source"]),
            mask=mask,
            split=str(row["split"]),
        )


def make_table(rows: list[dict[str, Any]] | pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Normalise a source table: base columns present and typed, class columns float32, in order."""
    df = pd.DataFrame(rows).reset_index(drop=True)
    for col in BASE_COLUMNS:
        if col not in df:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str)
    for c in classes:
        df[c] = df[c].astype(np.float32) if c in df else np.float32(0)
    return df[list(BASE_COLUMNS) + list(classes)]
