"""`csv:FILE`: an image-path column, 0/1 label columns, optional patient, mask and split columns.

Columns are found by name (`image=`, `labels=A,B`, `patient=`, `mask=`, `split=` options) or detected:
image from path/image/filename/Path/Image Index, patient from patient_id/patient/Patient ID/patientid,
labels = every other column whose values are all 0, 1 or blank (blank = masked out, stored as NaN), except
columns whose name holds a bookkeeping or demographic word (`BOOKKEEPING_WORDS`: labeled, is_train, fold,
has_mask, sex, ...). A left-out flag saying whether a row is labelled at all (labeled, annotated, ...)
masks the labels of its 0 rows: unknown, not negative. What was taken and left out, and why, is recorded
in `info["labels"]`. Relative paths (images and masks) are relative to the CSV's folder; a blank mask cell
means no mask. Without label columns the source has zero classes, which `open_dataset` accepts only for an
image+mask set (`?masks=only`). This is the format `medsyn generate` writes.
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
    read_csv_checked,
)
from medsyn.data.base import make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import DataError

IMAGE_COLUMNS = ("path", "image", "filename", "file", "Path", "Image Index", "image_path")
PATIENT_COLUMNS = ("patient_id", "patient", "Patient ID", "patientid", "PatientID")
SPLIT_VALUES = {"train", "val", "test", "trainval", ""}
# A 0/1 column is a finding unless a word of its name (split at non-letters and camelCase) is one of these:
# they record how a row is handled or who the patient is, and a classifier must not learn them as classes.
BOOKKEEPING_WORDS = frozenset({
    "id", "idx", "index", "unnamed", "fold", "split", "train", "training", "val", "valid", "validation", "test",
    "is", "has", "labeled", "labelled", "label", "labels", "annotated", "verified", "reviewed", "checked",
    "included", "excluded", "include", "exclude", "keep", "use", "used", "selected", "flag", "qc",
    "sex", "gender", "male", "female",
})  # fmt: skip
LABELLED_FLAG_WORDS = frozenset({"labeled", "labelled", "label", "labels", "annotated"})
LABEL_RULE = "0/1/blank columns other than image, patient, mask and split, except bookkeeping or demographic names"


def _pick(df: pd.DataFrame, spec: DatasetSpec, key: str, candidates: tuple[str, ...], required: bool) -> str | None:
    if key in spec.options:
        name = spec.options[key]
        if name not in df.columns:
            raise DataError(f"{spec.location}: no column {name!r} (from {key}=); found {', '.join(df.columns)}")
        return name
    found = next((c for c in candidates if c in df.columns), None)
    if found is None and required:
        raise DataError(
            f"{spec.location}: no image path column; name it with ?{key}=COLUMN or use one of {', '.join(candidates)}"
        )
    return found


def _is_binary(col: pd.Series) -> bool:
    return bool(col.str.strip().isin(["0", "1", "0.0", "1.0", ""]).all()) and bool((col.str.strip() != "").any())


def _name_words(name: str) -> set[str]:
    """'isTrain' -> {is, train}; 'Patient ID' -> {patient, id}."""
    return set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower())) - {""}


def _detect_labels(df: pd.DataFrame, used: set[str | None]) -> tuple[list[str], dict[str, str]]:
    """Label columns by `LABEL_RULE`, and each other column left out with its reason."""
    classes, left_out = [], {}
    for c in df.columns:
        if c in used:
            continue
        if not _is_binary(df[c]):
            left_out[c] = "not 0/1"
        elif words := sorted(_name_words(c) & BOOKKEEPING_WORDS):
            left_out[c] = f"bookkeeping or demographic word: {', '.join(words)}"
        else:
            classes.append(c)
    return classes, left_out


def _resolve(csv: Path, cells: pd.Series, what: str, blank_ok: bool = False) -> list[str]:
    """Paths of a column, relative ones taken from the CSV's folder; with `blank_ok` a blank cell stays ''
    (no file: a row without a mask). A listed file that does not exist is an error naming the first."""
    paths = [str(p if (p := Path(v)).is_absolute() else csv.parent / p) if v or not blank_ok else "" for v in cells]
    missing = [p for p in paths if p and not Path(p).is_file()]
    if missing:
        raise missing_files_error(missing, what)
    return paths


def open_csv(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("image", "labels", "patient", "mask", "split", "channels"))
    path = Path(spec.location).expanduser()
    df = read_csv_checked(path, [], "label CSV")
    if df.empty:
        raise DataError(f"{path}: label CSV has no rows")
    image_col = _pick(df, spec, "image", IMAGE_COLUMNS, required=True)
    patient_col = _pick(df, spec, "patient", PATIENT_COLUMNS, required=False)
    mask_col = _pick(df, spec, "mask", ("mask", "mask_path"), required=False)
    split_col = _pick(df, spec, "split", ("split",), required=False)
    used = {image_col, patient_col, mask_col, split_col}
    left_out: dict[str, str] = {}
    if "labels" in spec.options:
        classes = [c.strip() for c in spec.options["labels"].split(",") if c.strip()]
        missing = [c for c in classes if c not in df.columns]
        if missing:
            raise DataError(f"{path}: label column(s) {', '.join(missing)} not in CSV")
        bad = [c for c in classes if not _is_binary(df[c])]
        if bad:
            raise DataError(f"{path}: label column(s) {', '.join(bad)} hold values other than 0, 1 or blank")
    else:
        classes, left_out = _detect_labels(df, used)
    sources = _resolve(path, df[image_col], f"images in {path.name}")
    rows = pd.DataFrame({"source": sources})
    rows["patient_id"] = df[patient_col].str.strip() if patient_col else ""
    if mask_col:
        rows["mask"] = _resolve(path, df[mask_col], f"masks in {path.name} (column {mask_col!r})", blank_ok=True)
    if split_col:
        bad_split = sorted(set(df[split_col]) - SPLIT_VALUES)
        if bad_split:
            raise DataError(f"{path}: split column has value(s) {bad_split[:3]}; expected train, val, test")
        rows["split"] = df[split_col]
    for c in classes:
        rows[c] = pd.to_numeric(df[c].str.strip().replace("", np.nan)).astype(np.float32)
    flags = [c for c in df.columns if c not in used and c not in classes and _is_binary(df[c])
             and _name_words(c) & LABELLED_FLAG_WORDS]  # fmt: skip
    unlabelled = np.zeros(len(df), bool)
    for c in flags:
        unlabelled |= pd.to_numeric(df[c].str.strip().replace("", np.nan)).to_numpy() == 0
        left_out[c] = left_out.get(c, "bookkeeping name") + f"; rows with {c}=0 have unknown labels, masked"
    rows.loc[unlabelled, classes] = np.nan
    labels_info = {
        "how": "labels= option" if "labels" in spec.options else "auto-detected",
        "columns": classes,
        "rule": LABEL_RULE,
        "left_out": left_out,
        "unlabelled_rows": int(unlabelled.sum()),
    }
    info: dict = {"format": "csv", "image_column": image_col, "patient_column": patient_col, "labels": labels_info}
    if mask_col:
        info["mask_column"] = mask_col
    if not classes:
        info["no_labels"] = f"{path}: no label columns (0/1 values, {LABEL_RULE}); name them with ?labels=A,B"
    fallback_patient_ids(rows, info)
    return FileSource("csv", classes, make_table(rows, classes), channels_option(spec), info)
