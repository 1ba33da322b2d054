"""Is a synthetic (image, mask) set as close to real as real is to itself? KL divergences of pixel intensities
and of mask areas, each beside a real-vs-real baseline from two halves of the real set split by patient.

    div = mask_distribution_divergence(real_train, synthetic)     # SegmentationSet each
    metrics["segmentation_divergence"] = div.to_dict()

The histograms and divergences are `medsyn.evaluate.intensity`'s: a mask area (foreground fraction of one image
for one label, in [0, 1]) is histogrammed as the single pixel of a 1 x 1 image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsyn.errors import DataError
from medsyn.evaluate.data import RowView
from medsyn.evaluate.intensity import HistogramDivergence, histogram_divergence
from medsyn.evaluate.segmentation import SegmentationSet
from medsyn.evaluate.stats import cluster_codes
from medsyn.io import Result


@dataclass
class DivergencePair(Result):
    """One distribution (`what`) compared two ways from the same real half A: to the synthetic set, and to
    the other real half B (the baseline: what sampling alone gives). `over_baseline` compares the symmetric KLs."""

    what: str
    synthetic: HistogramDivergence
    baseline: HistogramDivergence
    over_baseline: float


@dataclass
class MaskDivergence(Result):
    """KL divergences of pixel intensities and of mask areas (foreground fraction per image, per label)."""

    intensity: DivergencePair
    area: list[DivergencePair]
    n_real_a: int
    n_real_b: int
    n_synthetic: int  # synthetic images used: at most as many as real half B, so both comparisons see equal N
    split: str


def _pair(what: str, a: Any, b: Any, syn: Any, bins: int, alpha: float) -> DivergencePair:
    s, base = histogram_divergence(a, syn, bins=bins, alpha=alpha), histogram_divergence(a, b, bins=bins, alpha=alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float64(s.symmetric_kl) / base.symmetric_kl
    return DivergencePair(what, s, base, float(ratio))


def mask_distribution_divergence(
    real: SegmentationSet,
    synthetic: SegmentationSet,
    *,
    label_names: Sequence[str] | None = None,
    bins: int = 256,
    area_bins: int = 20,
    alpha: float = 1.0,
    seed: int = 0,
) -> MaskDivergence:
    """Is the synthetic set as close to real as real is to itself? The real set is split in two halves by
    patient (seeded); half A is compared with half B (baseline) and with the synthetic set, subsampled to B's
    size (KL estimates from histograms depend on N). Areas are histogrammed on [0, 1] in `area_bins` bins."""
    names = real.label_names(label_names)
    n_labels = len(names)
    synthetic.check_labels(n_labels)
    real.check_labels(n_labels)
    codes, n_units = cluster_codes(real.patient_ids, len(real))
    if n_units < 2:
        raise DataError("a real-vs-real baseline needs at least 2 real patients (or images without patient ids)")
    rng = np.random.default_rng(seed)
    in_a = np.isin(codes, rng.permutation(n_units)[: n_units // 2])
    a, b = np.flatnonzero(in_a), np.flatnonzero(~in_a)
    s = np.sort(rng.permutation(len(synthetic))[: len(b)])

    def areas(data: SegmentationSet, rows: np.ndarray, label: int) -> np.ndarray:
        return (data.masks[rows] == label).mean(axis=(1, 2, 3), dtype=np.float64).reshape(-1, 1, 1, 1)

    area = [_pair(f"mask area: {name}", areas(real, a, lab), areas(real, b, lab), areas(synthetic, s, lab), area_bins,
                  alpha) for lab, name in enumerate(names, start=1)]  # fmt: skip
    views = [RowView(real.images, a), RowView(real.images, b), RowView(synthetic.images, s)]
    return MaskDivergence(
        intensity=_pair("pixel intensity", *views, bins, alpha),
        area=area,
        n_real_a=len(a),
        n_real_b=len(b),
        n_synthetic=len(s),
        split="patient" if real.patient_ids is not None else "image",
    )
