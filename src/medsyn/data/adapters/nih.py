"""NIH ChestX-ray14: `Data_Entry_2017.csv` + images under DIR, DIR/images/ or DIR/images_*/images/."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medsyn.data.adapters.common import (
    FileSource,
    channels_option,
    check_options,
    fallback_patient_ids,
    missing_files_error,
    read_csv_checked,
    require_dir,
)
from medsyn.data.base import make_table
from medsyn.data.spec import DatasetSpec

NIH_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]  # fmt: skip
NO_FINDING = "No Finding"


def _image_folders(root: Path) -> list[Path]:
    folders = [root, root / "images"]
    folders += sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    folders += sorted(p for p in root.glob("images_*") if p.is_dir())
    return [f for f in folders if f.is_dir()]


def _official_split(root: Path) -> dict[str, str]:
    split: dict[str, str] = {}
    for fname, name in (("train_val_list.txt", "trainval"), ("test_list.txt", "test")):
        path = root / fname
        if path.is_file():
            split.update({line.strip(): name for line in path.read_text().splitlines() if line.strip()})
    return split


def open_nih(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("channels",))
    root = require_dir(spec.location, "NIH ChestX-ray14")
    df = read_csv_checked(
        root / "Data_Entry_2017.csv", ["Image Index", "Finding Labels", "Patient ID"], "Data_Entry_2017.csv"
    )
    located: dict[str, str] = {}
    for folder in _image_folders(root):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    located.setdefault(entry.name, entry.path)
    missing = [n for n in df["Image Index"] if n not in located]
    if missing:
        raise missing_files_error(missing, "images in Data_Entry_2017.csv")
    findings = df["Finding Labels"].str.split("|")
    extra = sorted({f for fs in findings for f in fs} - set(NIH_CLASSES) - {NO_FINDING, ""})
    classes = NIH_CLASSES + extra
    official = _official_split(root)
    rows = pd.DataFrame(
        {
            "source": [located[n] for n in df["Image Index"]],
            "patient_id": df["Patient ID"].str.strip(),
            "split": [official.get(n, "") for n in df["Image Index"]],
        }
    )
    for c in classes:
        rows[c] = [float(c in fs) for fs in findings]
    info = {"format": "nih", "official_split": bool(official), "extra_labels": extra}
    fallback_patient_ids(rows, info)
    return FileSource("nih", classes, make_table(rows, classes), channels_option(spec), info)
