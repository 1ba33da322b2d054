"""The evaluation's segmentation stage (see `pipeline.evaluate`): runs when the synthetic set carries masks
(image + mask pairs, as a `twostage` generator writes them) and the real cache has masks too.

U-Nets trained on real, synthetic and real + synthetic (image, mask) pairs are tested on the real test
patients' pairs (`segmentation.py`); the intensity and mask-area distributions are compared with a
real-vs-real baseline (`mask_divergence.py`). Only real images that have a mask take part, split by patient
as the cache was. Masks of the ieee8023 collection were made by a model (lungVAE), not drawn by annotators:
the section says "silver-standard" for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medsyn.errors import DataError
from medsyn.evaluate.data import RowView
from medsyn.evaluate.mask_divergence import mask_distribution_divergence
from medsyn.evaluate.real import RealData
from medsyn.evaluate.segmentation import SegmentationSet, segmentation_utility
from medsyn.evaluate.settings import EvalSettings
from medsyn.evaluate.stages import Stage, skipped
from medsyn.evaluate.synthetic import SyntheticSet

SILVER_STANDARD_SOURCES = {"ieee8023": "lung masks made by a model (lungVAE) for part of the collection"}


@dataclass
class SegmentationOutcome:
    section: dict[str, Any] | None  # metrics.json "segmentation"; None when the synthetic set has no masks
    # what the triplet grid draws: synthetic masks and images, real training images
    grid: tuple[np.ndarray, np.ndarray, Any] | None = None


def segmentation_stage(real: RealData, syn: SyntheticSet, s: EvalSettings, stage: Stage) -> SegmentationOutcome:
    """Segmentation utility and mask/intensity divergences when the synthetic set carries masks (skipped with a
    reason when the real cache has none); None for a synthetic set without masks."""
    ds = real.ds
    if syn.masks is None:  # an image generator: real masks (the phantom always has them) ask for nothing
        return SegmentationOutcome(None)
    if not ds.has_masks:
        return SegmentationOutcome({"skipped": "the synthetic set has masks, the real cache none: prepare the real set "
                                               "with its masks (e.g. ?masks=only)"})  # fmt: skip
    ids = ds.index["patient_id"].astype(str).to_numpy()
    source = str(ds.meta.get("source_format", ""))
    section: dict[str, Any] = {"silver_standard": source in SILVER_STANDARD_SOURCES,
                               "mask_source": SILVER_STANDARD_SOURCES.get(source, "the dataset's own masks")}  # fmt: skip
    try:
        parts = {}
        for split in ("train", "val", "test"):
            rows = ds.mask_rows(split)
            parts[split] = SegmentationSet(RowView(ds.images, rows), ds.masks_for(rows), ids[rows], f"real_{split}")
        has = np.asarray(syn.has_mask)
        images = syn.images if has.all() else RowView(syn.images, np.flatnonzero(has))  # no copy of a large set
        synthetic = SegmentationSet(images, syn.masks if has.all() else syn.masks[has], None, "synthetic")
    except DataError as exc:
        return SegmentationOutcome({**section, **skipped(exc)})
    with stage("segmentation: U-Nets on real, synthetic and real+synthetic pairs"):
        try:
            section.update(segmentation_utility(parts["train"], parts["val"], parts["test"], synthetic, s.segmentation,
                                                n_bootstrap=s.utility.n_bootstrap, seed=s.seed).to_dict())  # fmt: skip
        except DataError as exc:
            section.update(skipped(exc))
    with stage("segmentation: intensity and mask-area divergence"):
        try:
            section["divergence"] = mask_distribution_divergence(parts["train"], synthetic, seed=s.seed).to_dict()
        except DataError as exc:
            section["divergence"] = skipped(exc)
    return SegmentationOutcome(section, (synthetic.masks, synthetic.images, parts["train"].images))
