"""Data layer: dataset adapters, patient-level splits and the prepared (memory-mapped) cache.

from medsyn.data import open_dataset, prepare, PreparedDataset
src = open_dataset("nih:/data/cxr14")             # lazy Source: table + read_image(i)
ds = prepare("nih:/data/cxr14", size=256, out="cache/nih256")
"""

from __future__ import annotations

from medsyn.data.adapters import open_dataset
from medsyn.data.base import Record, Source
from medsyn.data.cache import PreparedDataset, prepare, to_signed, to_unit
from medsyn.data.spec import DatasetSpec, parse_spec

__all__ = [
    "DatasetSpec", "PreparedDataset", "Record", "Source", "open_dataset", "parse_spec", "prepare",
    "to_signed", "to_unit",
]  # fmt: skip
