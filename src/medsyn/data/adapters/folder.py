"""`folder:DIR`: one sub-folder per class (ImageFolder layout), images found recursively inside each.

Patient ids: `?patient=REGEX` extracts one from the file name (first group, or the whole match);
without it every image is its own patient, which is recorded.

Masks: `?mask_dir=MASKS` is a parallel folder: the mask of DIR/a/b.png is MASKS/a/b.<any image suffix>, the
same relative path (class folder included), so equal file names in two classes never mix. Images without
such a file have no mask. A folder with images and no class sub-folders is a set without labels (zero
classes), which `open_dataset` accepts for an image+mask set (`?masks=only`).
"""

from __future__ import annotations

import re
from pathlib import Path

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


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _mask_paths(root: Path, images: list[Path], mask_dir: Path) -> list[str]:
    """Each image's mask in `mask_dir` by relative path without suffix, or ''; two candidates are an error."""
    by_stem: dict[Path, list[Path]] = {}
    for m in _images(mask_dir):
        by_stem.setdefault(m.relative_to(mask_dir).with_suffix(""), []).append(m)
    out = []
    for image in images:
        found = by_stem.get(image.relative_to(root).with_suffix(""), [])
        if len(found) > 1:
            raise DataError(f"{image}: more than one mask in {mask_dir} ({', '.join(p.name for p in found)})")
        out.append(str(found[0]) if found else "")
    if images and not any(out):
        rel = images[0].relative_to(root)
        raise DataError(
            f"{mask_dir}: no mask matches an image (the mask of {root / rel} would be {mask_dir / rel.parent}/"
            f"{rel.stem}.png or another image suffix)"
        )
    return out


def open_folder(spec: DatasetSpec) -> FileSource:
    check_options(spec, ("patient", "channels", "mask_dir"))
    root = require_dir(spec.location, "class")
    mask_dir = require_dir(spec.options["mask_dir"], "mask") if "mask_dir" in spec.options else None
    class_dirs = sorted(
        p for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (mask_dir is None or p.resolve() != mask_dir.resolve())
    )  # fmt: skip
    info: dict = {"format": "folder"}
    records = []
    for d in class_dirs:
        files = _images(d)
        if not files:
            raise DataError(f"{d}: class folder '{d.name}' holds no images (empty class)")
        records += [(f, d.name) for f in files]
    if not class_dirs:
        records = [(f, "") for f in _images(root, recursive=False)]
        if not records:
            raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")
        info["no_labels"] = f"{root}: images but no class sub-folders (expected one folder of images per class)"
    classes = [d.name for d in class_dirs]
    sources = [str(r[0]) for r in records]
    rows = pd.DataFrame({"source": sources, "split": ""})
    rows["patient_id"] = patient_from_name([s.rsplit("/", 1)[-1] for s in sources], spec.options.get("patient"))
    if mask_dir is not None:
        rows["mask"] = _mask_paths(root, [r[0] for r in records], mask_dir)
        info["mask_dir"] = str(mask_dir)
    for c in classes:
        rows[c] = [float(r[1] == c) for r in records]
    fallback_patient_ids(rows, info)
    return FileSource("folder", classes, make_table(rows, classes), channels_option(spec), info)
