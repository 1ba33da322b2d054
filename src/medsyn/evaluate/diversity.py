"""Does the synthetic set vary as much as real images do, or has the generator collapsed onto a few modes?

    res = self_diversity(syn_pixels, real_train_pixels, pixel_space)

Utility and fidelity can look fine for a collapsed set (two images repeated, one per class, still train a
classifier for an easy binary task), so diversity is measured on its own, against real images at the same N:

* nearest-other distances: for each of n synthetic images the distance to the nearest OTHER synthetic
  image, and the same within n real training images (n = min of the two sets, at most `max_images`);
* modes: images linked when they lie closer than t, the 5th percentile of the real nearest-other distances,
  and counted as connected components (`scipy.sparse.csgraph`). Real images give about 0.95 n modes by
  construction; a collapsed set gives a handful. The verdict compares the two counts
  (`medsyn.evaluate.verdicts`);
* the closest synthetic pairs, for the report.

Distances are exact Euclidean, by `torch.cdist` on float64 blocks: n <= 2000 keeps the two n x n matrices
at 32 MB each, and a random subset of 2000 images shows a collapse as clearly as all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.neighbors import as_feature_sets
from medsyn.io import Result

DIVERSITY_MAX_IMAGES = 2000
MODE_PERCENTILE = 5.0


@dataclass
class DiversityResult(Result):
    space: str
    n: int  # images on each side (a random subset of each set)
    threshold: float  # t: MODE_PERCENTILE-th percentile of the real nearest-other distances
    synthetic_modes: int  # connected components of "closer than t" among the synthetic images
    real_modes: int
    synthetic_median_nn: float  # median nearest-other distance
    real_median_nn: float
    near_duplicate_fraction: float  # synthetic images with another synthetic image closer than t
    closest_pairs: list[dict[str, float]]  # [{"a", "b" (synthetic indices), "distance"}], nearest first


def _pairwise(x: np.ndarray) -> np.ndarray:
    """Exact distances (n, n) in float64, the diagonal set to +inf."""
    t = torch.from_numpy(x)
    d = torch.cdist(t, t, compute_mode="donot_use_mm_for_euclid_dist").numpy()
    np.fill_diagonal(d, np.inf)
    return d


def _modes(d: np.ndarray, t: float) -> int:
    return int(connected_components(csr_matrix(d < t), directed=False)[0])


def self_diversity(
    synthetic: np.ndarray,
    real: np.ndarray,
    space: FeatureSpace | FeatureExtractor,
    *,
    max_images: int = DIVERSITY_MAX_IMAGES,
    n_pairs: int = 8,
    seed: int = 0,
) -> DiversityResult:
    """Nearest-other distances and mode counts of `synthetic` against `real` at the same n (module docstring)."""
    meta = FeatureSpace.of(space)
    s, r = as_feature_sets("diversity", 3, synthetic=synthetic, real=real)
    n = min(len(s), len(r), max_images)
    rng = np.random.default_rng(seed)
    si = np.sort(rng.choice(len(s), n, replace=False))
    ri = np.sort(rng.choice(len(r), n, replace=False))
    ds, dr = _pairwise(s[si]), _pairwise(r[ri])
    nn_s, nn_r = ds.min(axis=1), dr.min(axis=1)
    t = float(np.percentile(nn_r, MODE_PERCENTILE))
    a, b = np.triu_indices(n, k=1)
    nearest = np.argsort(ds[a, b], kind="stable")[:n_pairs]
    return DiversityResult(
        space=meta.name,
        n=n,
        threshold=t,
        synthetic_modes=_modes(ds, t),
        real_modes=_modes(dr, t),
        synthetic_median_nn=float(np.median(nn_s)),
        real_median_nn=float(np.median(nn_r)),
        near_duplicate_fraction=float(np.mean(nn_s < t)),
        closest_pairs=[{"a": int(si[a[i]]), "b": int(si[b[i]]), "distance": float(ds[a[i], b[i]])} for i in nearest],
    )
