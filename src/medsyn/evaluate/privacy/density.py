"""Density-ratio membership inference in the spirit of DOMIAS (van Breugel et al. 2023).

A generator that overfits puts more synthetic density at its training images than the real distribution
has there. DOMIAS scores a real image x by p_syn(x) / p_ref(x): the synthetic density over the density of
real images the generator never saw (the reference set). Dividing by p_ref removes what the distance attack
confuses with leakage: a typical image lies close to many synthetic images whether or not it was trained on.

Densities: Gaussian kernel density estimates (scipy's `gaussian_kde`, Scott's bandwidth) in a low-dimensional
projection (sklearn PCA, whitened, fitted on the reference and synthetic images, never on members). DOMIAS
also allows a normalising flow; a KDE in ~10 dimensions needs no training and no tuning, which matters for
a check run on every evaluation. Reference images must not be the evaluated non-members: the pipeline uses
the validation patients as reference and the test patients as non-members. So the split shift of the other
attacks (validation vs test non-members, `with_split_shift`) needs its own fit here: `with_density_split_shift`
takes half the validation patients as reference and scores the other half beside the test images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA

from medsyn.errors import DataError
from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.neighbors import as_feature_sets, subsample_rows
from medsyn.evaluate.privacy.membership import MIA_MIN_IMAGES, MIAResult, attack_result, with_split_shift

DENSITY_DIMS = 10  # PCA components the densities are estimated in
DENSITY_MAX_FIT = 5000  # images per density estimate (a seeded subsample above this; KDE cost is fit x query)


def density_ratio_inference(
    synthetic: np.ndarray | torch.Tensor,
    members: np.ndarray | torch.Tensor,
    non_members: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    member_ids: Any = None,
    non_member_ids: Any = None,
    dims: int = DENSITY_DIMS,
    max_fit: int = DENSITY_MAX_FIT,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> MIAResult:
    """AUROC of telling members from non-members by log p_syn(x) - log p_ref(x) (`attack_result` for the CI).

    `reference`: real images of patients that are neither members nor the evaluated non-members.
    """
    meta = FeatureSpace.of(space)
    syn, mem, non, ref = as_feature_sets(
        "density-ratio membership inference", MIA_MIN_IMAGES, synthetic=synthetic, members=members,
        non_members=non_members, reference=reference,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    syn_fit, ref_fit = (subsample_rows(x, max_fit, rng) for x in (syn, ref))
    k = min(dims, syn.shape[1], len(ref_fit) - 2, len(syn_fit) - 2)
    if k < 1:
        raise DataError(f"density-ratio membership inference needs at least 3 reference images, got {len(ref)}")
    pca = PCA(n_components=k, whiten=True, random_state=seed).fit(np.concatenate([syn_fit, ref_fit]))
    try:
        kde_syn, kde_ref = gaussian_kde(pca.transform(syn_fit).T), gaussian_kde(pca.transform(ref_fit).T)
    except (np.linalg.LinAlgError, ValueError) as exc:  # degenerate (e.g. identical) images: no density
        raise DataError(f"density-ratio membership inference: cannot estimate a density ({exc})") from None

    def score(x: np.ndarray) -> np.ndarray:
        z = pca.transform(x).T
        return kde_syn.logpdf(z) - kde_ref.logpdf(z)

    s_mem, s_non = score(mem), score(non)
    notes = [f"densities in {k} PCA dimensions from {len(syn_fit)} synthetic and {len(ref_fit)} reference images"]
    if not (np.isfinite(s_mem).all() and np.isfinite(s_non).all()):  # log-density underflow far from both sets
        notes.append("some images lie far outside both densities: their ratio is only ranked (inf kept as the "
                     "largest value, undefined as 0)")  # fmt: skip
        s_mem, s_non = np.nan_to_num(s_mem, nan=0.0), np.nan_to_num(s_non, nan=0.0)
    return attack_result(
        s_mem, s_non, attack="density ratio", score="log synthetic density - log reference density (KDE)",
        space=meta.name, implementation=meta.implementation, n_synthetic=len(syn), member_ids=member_ids,
        non_member_ids=non_member_ids, n_bootstrap=n_bootstrap, level=level, seed=seed, notes=notes,
    )  # fmt: skip


def with_density_split_shift(
    res: MIAResult,
    synthetic: np.ndarray | torch.Tensor,
    members: np.ndarray | torch.Tensor,
    validation: np.ndarray | torch.Tensor,
    test: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    validation_ids: Any,
    test_ids: Any,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> MIAResult:
    """`res` (the attack with the validation images as reference, the test images as non-members) with its
    split shift: the same score refitted with a random half of the validation patients as reference, then
    compared between the other half and the test images (`with_split_shift`). Without a shift between the
    held-out splits that is 0.5. Left as is when a half is too small to fit or score."""
    val_ids, val = np.asarray(validation_ids), np.asarray(validation)
    patients = np.unique(val_ids)
    reference = np.isin(val_ids, np.random.default_rng(seed).permutation(patients)[: len(patients) // 2])
    scored_ids = np.concatenate([val_ids[~reference], np.asarray(test_ids)])
    try:
        probe = density_ratio_inference(synthetic, members, np.concatenate([val[~reference], np.asarray(test)]),
                                        val[reference], space, non_member_ids=scored_ids, n_bootstrap=n_bootstrap,
                                        level=level, seed=seed)  # fmt: skip
    except DataError:
        return res
    shift = with_split_shift(probe, int((~reference).sum()), scored_ids, n_bootstrap=n_bootstrap, level=level, seed=seed)
    return replace(res, split_shift=shift.split_shift)
