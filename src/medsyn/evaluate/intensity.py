"""Intensity-histogram divergences (KL both ways, their mean, Jensen-Shannon) between the pixel values of
real and synthetic images: a backbone-free check that the grey levels are right."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from medsyn.errors import ConfigError
from medsyn.evaluate.data import as_unit_tensor, batches, check_images
from medsyn.io import ARRAY, Result


@dataclass
class HistogramDivergence(Result):
    """Divergences (nats) between the pixel-intensity histograms of the two sets.

    kl_real_synthetic = KL(P_real || P_synthetic): large when the synthetic set lacks intensities that
    real images have; kl_synthetic_real the reverse; symmetric_kl their mean; js the Jensen-Shannon
    divergence (bounded by ln 2). Histograms: `bins` equal bins on [0, 1], additive smoothing with
    `alpha` pseudo-counts per bin (so no empty bin makes KL infinite).
    """

    kl_real_synthetic: float
    kl_synthetic_real: float
    symmetric_kl: float
    js: float
    bins: int
    alpha: float
    n_real: int
    n_synthetic: int
    real_histogram: np.ndarray = field(metadata=ARRAY)  # probabilities (bins,)
    synthetic_histogram: np.ndarray = field(metadata=ARRAY)


def intensity_histogram(images: Any, bins: int = 256, alpha: float = 1.0, batch_size: int = 256) -> np.ndarray:
    """Smoothed probability histogram of all pixel values in [0, 1] (uint8 or float images), batched."""
    images = check_images(images)
    counts = torch.zeros(bins, dtype=torch.float64)
    for idx in batches(len(images), batch_size):
        x = as_unit_tensor(np.asarray(images[idx]))
        b = (x.flatten() * bins).long().clamp_(0, bins - 1)
        counts += torch.bincount(b, minlength=bins).double()
    p = (counts + alpha) / (counts.sum() + alpha * bins)
    return p.numpy()


def histogram_divergence(
    real_images: Any, synthetic_images: Any, *, bins: int = 256, alpha: float = 1.0
) -> HistogramDivergence:
    """Pixel-intensity histogram divergences of two image sets (see `HistogramDivergence`)."""
    if bins < 2 or alpha <= 0:
        raise ConfigError(f"histogram divergence needs bins >= 2 and alpha > 0, got {bins}, {alpha}")
    p = intensity_histogram(real_images, bins, alpha)
    q = intensity_histogram(synthetic_images, bins, alpha)
    kl_pq, kl_qp = float(entropy(p, q)), float(entropy(q, p))
    return HistogramDivergence(
        kl_pq,
        kl_qp,
        (kl_pq + kl_qp) / 2,
        float(jensenshannon(p, q) ** 2),  # scipy gives the JS distance, the square root of the divergence
        bins,
        alpha,
        len(real_images),
        len(synthetic_images),
        p,
        q,
    )
