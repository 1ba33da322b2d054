"""One adapter per dataset format; each turns a `DatasetSpec` into a lazy `Source`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medsyn.data.adapters.chexpert import open_chexpert
from medsyn.data.adapters.csvfile import open_csv
from medsyn.data.adapters.folder import open_folder
from medsyn.data.adapters.ieee8023 import open_ieee8023
from medsyn.data.adapters.medmnist import open_medmnist
from medsyn.data.adapters.nih import open_nih
from medsyn.data.base import Source
from medsyn.data.spec import DatasetSpec, parse_spec

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
    if spec.kind == "phantom":
        from medsyn.data.phantom import open_phantom

        return open_phantom(spec)
    return ADAPTERS[spec.kind](spec)
