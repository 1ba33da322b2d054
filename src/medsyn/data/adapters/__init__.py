"""One adapter per dataset format; each turns a `DatasetSpec` into a lazy `Source`.

Every kind also takes `?negative=NAME`: what images without any positive label are called (the negative
group a generator is trained on and drawn for). Default: 'No Finding' for chest X-ray findings (NIH,
CheXpert, ieee8023, ChestMNIST, the phantom), else 'normal'.

And `?masks=only|all` (default `all`: every image, with its mask where it has one, as a classification
set wants). `only` keeps the images that have a mask, for mask-to-image generation and segmentation; it
also makes a set without labels valid (e.g. normal radiographs with lung masks: zero classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medsyn.data.adapters.chexpert import open_chexpert
from medsyn.data.adapters.csvfile import open_csv
from medsyn.data.adapters.folder import open_folder
from medsyn.data.adapters.ieee8023 import open_ieee8023
from medsyn.data.adapters.medmnist import open_medmnist
from medsyn.data.adapters.nih import NO_FINDING, open_nih
from medsyn.data.base import Source
from medsyn.data.spec import DatasetSpec, parse_spec
from medsyn.errors import DataError, SpecError

CHEST_FINDINGS = ("nih", "chexpert", "ieee8023", "phantom")
MASK_CHOICES = ("all", "only")
# Where each kind finds masks, for the error of a `masks=only` set without any.
MASK_SOURCES = {
    "ieee8023": "DIR/masks/<filename>",
    "folder": "a parallel mask folder, mask_dir=DIR",
    "csv": "a mask column, mask=COLUMN (or one named mask or mask_path)",
    "phantom": "built in",
}

ADAPTERS: dict[str, Callable[[DatasetSpec], Source]] = {
    "nih": open_nih,
    "chexpert": open_chexpert,
    "medmnist": open_medmnist,
    "ieee8023": open_ieee8023,
    "folder": open_folder,
    "csv": open_csv,
}


def open_dataset(spec: str | DatasetSpec | dict[str, Any]) -> Source:
    """Open a dataset spec as a lazy `Source` (reads label files only, no pixels)."""
    spec = parse_spec(spec)
    negative = spec.options.get("negative")
    if negative is not None and not negative.strip():
        raise SpecError(f"{spec}: option negative= needs a name, e.g. negative=normal")
    masks = spec.options.get("masks", "all")
    if masks not in MASK_CHOICES:
        hint = "; a parallel mask folder is mask_dir=DIR" if spec.kind == "folder" else ""
        raise SpecError(f"{spec}: option masks={masks!r} must be 'only' (images with a mask) or 'all'{hint}")
    own = DatasetSpec(
        spec.kind, spec.location, {k: v for k, v in spec.options.items() if k not in ("negative", "masks")}
    )
    if spec.kind == "phantom":
        from medsyn.data.phantom import open_phantom

        src: Source = open_phantom(own)
    else:
        src = ADAPTERS[spec.kind](own)
    src.info["negative_class"] = negative.strip() if negative else default_negative_class(spec.kind, src.info)
    _apply_masks_option(src, spec, only=masks == "only")
    return src


def _apply_masks_option(src: Source, spec: DatasetSpec, only: bool) -> None:
    """Keep only the images with a mask when `only`; count them in `info['masks']`; refuse a set without
    labels unless it is an image+mask set."""
    has = (src.table["mask"] != "").to_numpy()
    if only and not has.any():
        where = MASK_SOURCES.get(spec.kind, f"'{spec.kind}' has no masks")
        raise DataError(f"{spec}: masks=only but no image has a mask (masks come from: {where})")
    if not src.classes and not only:
        raise DataError(
            f"{spec}: {src.info.get('no_labels', 'no label classes')}; "
            "for an image+mask set without labels add ?masks=only"
        )
    if has.any() or only:
        src.info["masks"] = {"with_mask": int(has.sum()), "without_mask": int((~has).sum()), "only": only}
    if only and not has.all():
        # Only file-based sources get here (the phantom's and MedMNIST's masks are all or none), and they
        # read their files by table row, so dropping rows is safe.
        src.table = src.table.loc[has].reset_index(drop=True)
        # a class whose positives all lacked a mask is gone from this set, as if the data had never held it
        empty = [c for c in src.classes if not (src.table[c] > 0).any()]
        if empty:
            src.classes = [c for c in src.classes if c not in empty]
            src.table = src.table.drop(columns=empty)
            src.info["masks"]["classes_left_out"] = empty


def default_negative_class(kind: str, info: dict[str, Any]) -> str:
    """The name of 'no positive label' in a dataset's own terms (caches prepared before it was recorded
    get theirs from here too)."""
    chest = kind in CHEST_FINDINGS or (kind == "medmnist" and info.get("dataset") == "chestmnist")
    return NO_FINDING if chest else "normal"
