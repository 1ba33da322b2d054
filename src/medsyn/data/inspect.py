"""`medsyn data inspect`: what a dataset holds and what is wrong with it, before anything is trained."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from medsyn.data.adapters import open_dataset
from medsyn.data.spec import DatasetSpec
from medsyn.data.splits import assign_splits


def _header_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the file header only, or an error string."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        with Image.open(p) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, AttributeError, EOFError) as exc:
        return f"{p}: unreadable header ({exc})"


def inspect_dataset(
    spec: str | DatasetSpec, val: float = 0.1, test: float = 0.2, seed: int = 0, max_headers: int = 2000
) -> dict[str, Any]:
    """Counts per class and split, patients, image sizes (from up to `max_headers` file headers), problems."""
    src = open_dataset(spec)
    table = src.table.copy()
    table["split"] = assign_splits(table, src.classes, val, test, seed)
    problems: list[str] = []
    per_split: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        per_split[split] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "per_class": {
                c: {"images": int((part[c] > 0).sum()), "patients": int(part.loc[part[c] > 0, "patient_id"].nunique())}
                for c in src.classes
            },
        }
    labels = table[src.classes].to_numpy(np.float32)
    positives = np.nan_to_num(labels) > 0
    for c, n in zip(src.classes, positives.sum(axis=0), strict=True):
        if n == 0:
            problems.append(f"class {c!r} has no positive images (empty class)")
        elif n < 10:
            problems.append(f"class {c!r} has only {n} positive images: too few for a per-class metric")
    no_finding = int((~positives.any(axis=1)).sum())
    dup = table["source"].duplicated(keep=False)
    if dup.any():
        linked = table.loc[dup].groupby("source")["patient_id"].apply(lambda s: "/".join(sorted(set(s))))
        problems.append(
            f"{int(table['source'].duplicated().sum())} image files listed more than once "
            f"(patients linked, kept on one side of every split): {', '.join(sorted(set(linked))[:5])}"
        )
    sizes: Counter[tuple[int, int]] = Counter()
    files = table["source"].to_numpy()
    if Path(str(files[0])).is_file():
        rng = np.random.default_rng(seed)
        pick = files if len(files) <= max_headers else rng.choice(files, max_headers, replace=False)
        for f in pick:
            result = _header_size(str(f))
            if isinstance(result, str):
                problems.append(result)
            else:
                sizes[result] += 1
    left_out = {
        "rows_todo_left_out": "not yet labelled ('todo')",
        "rows_filtered_by_view": "other view than requested",
        "rows_not_xray": "not X-ray",
    }
    for key, why in left_out.items():
        if src.info.get(key):
            problems.append(f"{src.info[key]} rows left out: {why}")
    if src.info.get("patient_id_fallback"):
        problems.append(f"{src.info['patient_id_fallback']} images have no patient id: each counts as its own patient")
    per_patient = table.groupby("patient_id").size()
    return {
        "spec": str(spec),
        "name": src.name,
        "classes": src.classes,
        "images": len(table),
        "patients": int(table["patient_id"].nunique()),
        "images_per_patient": {"mean": float(per_patient.mean()), "max": int(per_patient.max())},
        "no_finding": no_finding,
        "splits": per_split,
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common(10)},
        "headers_read": int(sum(sizes.values())),
        "info": src.info,
        "problems": problems,
    }


def inspect_table(report: dict[str, Any]) -> pd.DataFrame:
    """Per-class rows (images / patients in each split) for printing."""
    rows = []
    for c in report["classes"]:
        row = {"class": c}
        for split, part in report["splits"].items():
            row[f"{split} img"] = part["per_class"][c]["images"]
            row[f"{split} pat"] = part["per_class"][c]["patients"]
        rows.append(row)
    return pd.DataFrame(rows)
