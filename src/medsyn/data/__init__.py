"""Data layer: dataset adapters, patient-level splits and the prepared (memory-mapped) cache.

from medsyn.data import open_dataset, prepare, PreparedDataset
src = open_dataset("nih:/data/cxr14")             # lazy Source: table + read_image(i)
ds = prepare("nih:/data/cxr14", size=256, out="cache/nih256")
lungs = prepare("ieee8023:/data/covid?masks=only", size=128, out="cache/covid-lungs")   # image + mask pairs
lungs.masks_for(lungs.mask_rows("train"))          # uint8 (N, 1, S, S): 0 background, labels 1..8
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
