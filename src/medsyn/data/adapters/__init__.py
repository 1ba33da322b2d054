"""One adapter per dataset format; each turns a `DatasetSpec` into a lazy `Source`.

Every kind also takes `?negative=NAME`: what images without any positive label are called (the negative
group a generator is trained on and drawn for). Default: 'No Finding' for chest X-ray findings (NIH,
CheXpert, ieee8023, ChestMNIST, the phantom), else 'normal'.
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
from medsyn.errors import SpecError

CHEST_FINDINGS = ("nih", "chexpert", "ieee8023", "phantom")

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
    own = DatasetSpec(spec.kind, spec.location, {k: v for k, v in spec.options.items() if k != "negative"})
    if spec.kind == "phantom":
        from medsyn.data.phantom import open_phantom

        src: Source = open_phantom(own)
    else:
        src = ADAPTERS[spec.kind](own)
    src.info["negative_class"] = negative.strip() if negative else default_negative_class(spec.kind, src.info)
    return src


def default_negative_class(kind: str, info: dict[str, Any]) -> str:
    """The name of 'no positive label' in a dataset's own terms (caches prepared before it was recorded
    get theirs from here too)."""
    chest = kind in CHEST_FINDINGS or (kind == "medmnist" and info.get("dataset") == "chestmnist")
    return NO_FINDING if chest else "normal"
