"""`folder:DIR`: one sub-folder per class (ImageFolder layout), images found recursively inside each.

Patient ids: `?patient=REGEX` extracts one from the file name (first group, or the whole match);
without it every image is its own patient, which is recorded.
"""

from __future__ import annotations

import re

import pandas as pd

from medsyn.data.adapters.common import (
    IMAGE_SUFFIXES,
    FileSource,
    channels_option,
    check_options,
    fallback_patient_ids,
    require_dir,
)
from medsyn.data.base import make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import DataError, SpecError


def patient_from_name(names: list[str], pattern: str | None) -> list[str]:
    if not pattern:
        return [""] * len(names)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SpecError(f"bad patient regex {pattern!r}: {exc}") from None
    out = []
    for name in names:
        m = regex.search(name)
        out.append((m.group(1) if m.groups() else m.group(0)) if m else "")
    return out


def open_folder(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("patient", "channels"))
    root = require_dir(spec.location, "class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
    records = []
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{d}: class folder '{d.name}' holds no images (empty class)")
        records += [(str(f), d.name) for f in files]
    classes = [d.name for d in class_dirs]
    sources = [r[0] for r in records]
    rows = pd.DataFrame({"source": sources, "split": ""})
    rows["patient_id"] = patient_from_name([s.rsplit("/", 1)[-1] for s in sources], spec.options.get("patient"))
    for c in classes:
        rows[c] = [float(r[1] == c) for r in records]
    info: dict = {"format": "folder"}
    fallback_patient_ids(rows, info)
    return FileSource("folder", classes, make_table(rows, classes), channels_option(spec), info)
