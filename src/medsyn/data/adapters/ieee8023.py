"""The ieee8023 COVID-19 image data collection: `metadata.csv` + `images/` (+ optional `masks/`).

X-ray rows only; `todo` (not yet labelled) rows are left out and counted; combined findings such as
`COVID-19, ARDS` (or the later hierarchical `Pneumonia/Viral/COVID-19`) become multi-label; `No Finding`
is the all-zero label. Files listed under two patient ids are linked by the splitter (same `source`).
`masks/<filename>`, where present, is that image's lung mask (0/255 PNGs from lungVAE in the public copy);
`?masks=only` keeps only the images that have one.
"""

from __future__ import annotations

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

FRONTAL = ("PA", "AP", "AP Supine", "AP Erect", "AP semi erect")


def _findings(text: str) -> list[str]:
    out = []
    for part in text.split(","):
        leaf = part.strip().split("/")[-1].strip()
        if leaf and leaf != "No Finding":
            out.append(leaf)
    return out


def open_ieee8023(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("view", "channels"))
    view = option(spec, "view", "all", ("all", "frontal"))
    root = require_dir(spec.location, "ieee8023 covid-chestxray")
    df = read_csv_checked(
        root / "metadata.csv", ["patientid", "finding", "view", "modality", "filename"], "metadata.csv"
    )
    xray = df[df["modality"].str.strip() == "X-ray"]
    todo = xray["finding"].str.strip().str.lower() == "todo"
    kept = xray[~todo]
    if view == "frontal":
        kept = kept[kept["view"].str.strip().isin(FRONTAL)]
    kept = kept.reset_index(drop=True)
    folders = kept["folder"] if "folder" in kept else pd.Series(["images"] * len(kept))
    paths = [root / (f or "images") / name for f, name in zip(folders, kept["filename"], strict=True)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise missing_files_error(missing, "images in metadata.csv")
    findings = [_findings(f) for f in kept["finding"]]
    classes = sorted({f for fs in findings for f in fs})
    masks = [root / "masks" / name for name in kept["filename"]]
    rows = pd.DataFrame(
        {
            "source": [str(p) for p in paths],
            "patient_id": kept["patientid"].str.strip(),
            "split": "",
            "mask": [str(m) if m.is_file() else "" for m in masks],
        }
    )
    for c in classes:
        rows[c] = [float(c in fs) for fs in findings]
    info = {
        "format": "ieee8023",
        "view": view,
        "rows_total": len(df),
        "rows_not_xray": int(len(df) - len(xray)),
        "rows_todo_left_out": int(todo.sum()),
        "rows_filtered_by_view": int((~todo).sum() - len(kept)),
        "files_listed_twice": int(pd.Series([str(p) for p in paths]).duplicated().sum()),
    }
    fallback_patient_ids(rows, info)
    return FileSource("ieee8023", classes, make_table(rows, classes), channels_option(spec), info)
