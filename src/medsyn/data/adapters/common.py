"""Pieces the file-based adapters share: a Source that reads image files, CSV checks, option parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsyn.data.base import Source
from medsyn.data.images import load_image
from medsyn.data.masks import load_mask
from medsyn.data.spec import DatasetSpec
from medsyn.errors import DataError, SpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


@dataclass
class FileSource(Source):
    """A Source whose `source` column holds image paths (and `mask` column optional mask paths)."""

    def read_image(self, i: int) -> np.ndarray:
        return load_image(self.table["source"].iat[i], channels=self.channels)

    def read_mask(self, i: int) -> np.ndarray | None:
        path = self.table["mask"].iat[i]
        return load_mask(path) if path else None


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def read_csv_checked(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV and fail with one line naming the missing columns."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse {what} ({str(exc).splitlines()[0]})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: {what} lacks column(s) {', '.join(map(repr, missing))}; found {', '.join(df.columns[:12])}"
        )
    return df


def option(spec: DatasetSpec, name: str, default: str, choices: tuple[str, ...] | None = None) -> str:
    value = spec.options.get(name, default)
    if choices is not None and value not in choices:
        raise SpecError(f"{spec}: option {name}={value!r} must be one of {', '.join(choices)}")
    return value


def check_options(spec: DatasetSpec, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise SpecError(
            f"{spec}: unknown option(s) {', '.join(unknown)} for '{spec.kind}'; allowed: {', '.join(allowed)}"
        )


def channels_option(spec: DatasetSpec) -> int:
    return int(option(spec, "channels", "1", ("1", "3")))


def missing_files_error(paths: list[str], what: str) -> DataError:
    return DataError(f"{len(paths)} {what} listed but not found on disk, first: {paths[0]}")


def fallback_patient_ids(rows: pd.DataFrame, info: dict) -> None:
    """Give rows without a patient id their own image id (one image = one patient) and record how many."""
    empty = rows["patient_id"].fillna("").astype(str).str.strip() == ""
    if empty.any():
        rows.loc[empty, "patient_id"] = [f"img:{Path(s).stem}" for s in rows.loc[empty, "source"]]
        info["patient_id_fallback"] = int(empty.sum())
