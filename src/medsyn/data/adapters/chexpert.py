"""CheXpert: `train.csv` / `valid.csv` with a `Path` column and 14 observations coded 1 / 0 / -1 / blank.

Uncertain (-1) labels follow an explicit policy (`uncertain=zeros|ones|ignore`, Irvin et al. 2019):
`ignore` stores NaN, which every medsyn loss and metric masks out. Blank means not mentioned: 0.
The official `valid.csv` (radiologist-labelled) becomes the `test` split; `train.csv` is `trainval`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from medsyn.data.adapters.common import (
    FileSource,
    channels_option,
    check_options,
    fallback_patient_ids,
    missing_files_error,
    option,
    read_csv_checked,
    require_dir,
)
from medsyn.data.base import make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import DataError

CHEXPERT_CLASSES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]  # fmt: skip
POLICIES = ("zeros", "ones", "ignore")
_PATIENT = re.compile(r"(patient\d+)")


def _resolve(root: Path, rel: str) -> Path:
    """CSV paths start with the dataset folder's own name (`CheXpert-v1.0-small/train/...`)."""
    rel_path = Path(rel)
    for candidate in (root.parent / rel_path, root / rel_path, root / Path(*rel_path.parts[1:])):
        if candidate.is_file():
            return candidate
    return root / Path(*rel_path.parts[1:])


def _encode(values: pd.Series, policy: str) -> np.ndarray:
    codes = pd.to_numeric(values.replace("", "0"), errors="coerce").to_numpy(dtype=np.float32)
    if np.isnan(codes).any():
        bad = values[np.isnan(codes)].iloc[0]
        raise DataError(f"CheXpert label value {bad!r} is not one of 1, 0, -1 or blank")
    uncertain = codes == -1
    codes[uncertain] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[policy]
    return codes


def open_chexpert(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("uncertain", "view", "channels"))
    policy = option(spec, "uncertain", "zeros", POLICIES)
    view = option(spec, "view", "frontal", ("frontal", "lateral", "all"))
    root = require_dir(spec.location, "CheXpert")
    frames = []
    for fname, split in (("train.csv", "trainval"), ("valid.csv", "test")):
        if (root / fname).is_file() or fname == "train.csv":
            df = read_csv_checked(root / fname, ["Path", *CHEXPERT_CLASSES], f"CheXpert {fname}")
            df["split"] = split
            frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    total = len(df)
    if view != "all":
        if "Frontal/Lateral" not in df:
            raise DataError(f"{root}: CheXpert CSV lacks the 'Frontal/Lateral' column needed for view={view}")
        df = df[df["Frontal/Lateral"].str.lower() == view].reset_index(drop=True)
    paths = [_resolve(root, p) for p in df["Path"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise missing_files_error(missing, "CheXpert images")
    rows = pd.DataFrame(
        {
            "source": [str(p) for p in paths],
            "patient_id": [m.group(1) if (m := _PATIENT.search(p)) else "" for p in df["Path"]],
            "split": df["split"],
        }
    )
    for c in CHEXPERT_CLASSES:
        rows[c] = _encode(df[c], policy)
    info = {"format": "chexpert", "uncertainty_policy": policy, "view": view, "rows_filtered_by_view": total - len(df)}
    fallback_patient_ids(rows, info)
    return FileSource("chexpert", CHEXPERT_CLASSES, make_table(rows, CHEXPERT_CLASSES), channels_option(spec), info)
