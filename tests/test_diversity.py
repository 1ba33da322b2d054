"""Synthetic self-diversity: a collapsed set is told from a varied one, against real images at the same N."""

from __future__ import annotations

import numpy as np
import pytest

from medsyn.errors import DataError
from medsyn.evaluate.diversity import self_diversity
from medsyn.evaluate.features import FeatureSpace
from medsyn.evaluate.verdicts import diversity_verdict

SPACE = FeatureSpace("test-pixels", "random arrays")


def _real(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32))


def test_a_set_of_two_repeated_images_is_collapsed() -> None:
    real = _real(140, 0)
    two = _real(2, 1)
    collapsed = two[np.arange(140) % 2] + np.random.default_rng(2).normal(scale=1e-3, size=(140, 32))
    res = self_diversity(collapsed, real, SPACE)
    assert res.n == 140 and res.synthetic_modes == 2 and res.real_modes >= 0.9 * 140
    assert res.near_duplicate_fraction == 1.0 and res.synthetic_median_nn < 0.01 * res.real_median_nn
    pair = res.closest_pairs[0]
    assert pair["a"] % 2 == pair["b"] % 2 and pair["distance"] == min(p["distance"] for p in res.closest_pairs)
    verdict = diversity_verdict(res.to_dict())
    assert verdict.level == "fail" and "collapsed" in verdict.reason and "2 distinct modes" in verdict.reason


def test_a_varied_set_passes_and_a_half_duplicated_one_warns() -> None:
    real, fresh = _real(300, 0), _real(300, 3)
    assert diversity_verdict(self_diversity(fresh, real, SPACE).to_dict()).level == "pass"
    repeats = fresh.copy()
    repeats[150:240] = repeats[:90]  # 90 of 300 images drawn twice: about 0.7 of the real modes
    res = self_diversity(repeats, real, SPACE)
    assert res.synthetic_modes < 0.8 * res.real_modes and diversity_verdict(res.to_dict()).level == "warn"


def test_same_n_subsets_and_limits() -> None:
    res = self_diversity(_real(50, 1), _real(500, 0), SPACE, max_images=40)
    assert res.n == 40 and len(res.closest_pairs) == 8
    with pytest.raises(DataError, match="at least 3"):
        self_diversity(_real(2, 1), _real(50, 0), SPACE)
