"""MedMNIST v2 / MedMNIST+ 2D npz files: `{train,val,test}_images` and `_labels`, official splits kept.

MedMNIST ships no patient ids, so every image is its own patient (recorded in `info`). Class names of the
chest-related sets are built in; other sets get `class_<k>` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medsyn.data.adapters.common import check_options
from medsyn.data.adapters.nih import NIH_CLASSES
from medsyn.data.base import Source, make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import DataError

KNOWN_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "chestmnist": NIH_CLASSES,
    "breastmnist": ["malignant", "normal, benign"],
}
SPLITS = ("train", "val", "test")


@dataclass
class MedMNISTSource(Source):
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 1), np.uint8), repr=False)

    def read_image(self, i: int) -> np.ndarray:
        img = self.images[i].astype(np.float32) / 255.0
        return img.transpose(2, 0, 1).copy() if img.ndim == 3 else img[None]


def open_medmnist(spec: DatasetSpec) -> MedMNISTSource:
    check_options(spec, ())
    path = Path(spec.location).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: MedMNIST npz file not found")
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable MedMNIST npz ({exc})") from None
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise DataError(f"{path}: npz lacks array(s) {', '.join(missing)}")
    images = np.concatenate([arrays[f"{s}_images"] for s in SPLITS])
    labels = np.concatenate([arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_images"]), -1) for s in SPLITS])
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise DataError(
            f"{path}: expected uint8 images of shape (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}"
        )
    stem = path.stem.split("_")[0].lower()
    multilabel = labels.shape[1] > 1
    n_classes = labels.shape[1] if multilabel else int(labels.max()) + 1
    classes = KNOWN_CLASSES.get(stem, [f"class_{k}" for k in range(n_classes)])
    if len(classes) != n_classes:
        raise DataError(f"{path}: {n_classes} label values but {stem} has {len(classes)} known classes")
    onehot = labels.astype(np.float32) if multilabel else np.eye(n_classes, dtype=np.float32)[labels[:, 0]]
    split = np.concatenate([[s] * len(arrays[f"{s}_images"]) for s in SPLITS])
    ids = [f"{stem}/{s}/{i:06d}" for s in SPLITS for i in range(len(arrays[f"{s}_images"]))]
    rows = pd.DataFrame({"source": ids, "patient_id": [f"img:{i}" for i in ids], "split": split})
    rows = pd.concat([rows, pd.DataFrame(onehot, columns=classes)], axis=1)
    info = {"format": "medmnist", "dataset": stem, "multilabel": multilabel, "patient_id_fallback": len(rows)}
    channels = 3 if images.ndim == 4 else 1
    return MedMNISTSource(stem, list(classes), make_table(rows, list(classes)), channels, info, images=images)
