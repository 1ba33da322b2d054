"""Fidelity of a synthetic set: how close its feature distribution is to the real one.

All metrics take float64 feature arrays (N, D) (from `medsyn.evaluate.features`) plus the feature
space they came from, and return dataclasses whose `to_dict()` is JSON-ready. Every value carries the
backbone name, its implementation string and the sample sizes, because FID/KID/PRDC values are only
comparable at the same backbone and the same N.

* FID (Heusel et al. 2017), float64, `scipy.linalg.sqrtm` with pytorch-fid's eps-offset fallback.
  FID is biased upward at small N, so `compute_fid` also gives a real-vs-real baseline at the same N
  (disjoint real subsets) and the synthetic FID against the same real subsets: the fair comparison.
  With patient ids the real subsets hold whole patients: images of one patient are near-duplicates, so
  a patient on both sides makes the baseline optimistic (too low) and flatters the synthetic set.
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3 over random subsets, mean and std (as clean-fid / torch-fidelity).
* Precision, recall, density, coverage (Naeem et al. 2020), k = 5; equal to the `prdc` package on
  the same inputs (exact distances; see `medsyn.evaluate.neighbors`), with bounded memory.
* Per-class FID on features grouped by label, with a stated reason for skipped classes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.data import check_patient_ids
from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.neighbors import as_feature_sets, ball_counts, knn, subsample_rows
from medsyn.io import ARRAY, Result, to_jsonable  # noqa: F401  (benchmark/sweep.py imports it from here)

MIN_FID_IMAGES = 10
"""Fewest images per set for an FID: below this the covariance estimate is meaningless."""

# ----------------------------------------------------------------------------------------------- FID


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N - 1), float64, as pytorch-fid."""
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def _sqrtm(m: np.ndarray) -> tuple[np.ndarray, str | None]:
    """`scipy.linalg.sqrtm` with its LinAlgWarning (singular or ill-conditioned input) caught and returned as
    text, so the result can say so instead of a raw warning reaching the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(m)
    messages = [str(w.message).strip() for w in caught if issubclass(w.category, scipy.linalg.LinAlgWarning)]
    return root, ("; ".join(dict.fromkeys(messages)) or None)


def _frechet(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float
) -> tuple[float, bool, str | None]:
    """Frechet distance, whether the eps offset was needed (singular covariance product), and scipy's
    ill-conditioning warning about the square root (None when there was none)."""
    diff = mu1 - mu2
    covmean, ill = _sqrtm(sigma1 @ sigma2)
    offset = not np.isfinite(covmean).all()
    if offset:
        shift = np.eye(len(mu1)) * eps
        covmean, ill = _sqrtm((sigma1 + shift) @ (sigma2 + shift))
        if not np.isfinite(covmean).all():
            raise DataError(
                f"FID: the covariance product has no finite square root, even offset by {eps:g}; the features "
                "are degenerate (non-finite or constant)"
            )
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > 1e-3:
            raise DataError(
                f"FID: the covariance product has no real square root (max |imag| {imag:.3g}); "
                "the features are degenerate (too few images or constant features)"
            )
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(value), offset, ill


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) in float64 (may be a tiny negative for equal inputs)."""
    args = [np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2)]
    return _frechet(*args, eps=eps)[0]


@dataclass
class FIDBaseline(Result):
    """FIDs at n images per side over `repeats` random draws (mean and std).

    real_vs_real: between two disjoint real subsets (the floor a perfect generator would reach at this
    n); synthetic_vs_real: between the first of those subsets and n synthetic images. split: "by patient"
    (each patient's images on one side only) or "by image" (a patient may straddle both sides, which
    lowers real_vs_real). n is below n_requested when whole patients cannot fill two halves; note says so.
    """

    n: int
    repeats: int
    real_vs_real: float
    real_vs_real_std: float
    synthetic_vs_real: float
    synthetic_vs_real_std: float
    split: str
    n_requested: int
    n_patients: int | None
    note: str


@dataclass
class FIDResult(Result):
    fid: float
    backbone: str
    implementation: str
    n_real: int
    n_synthetic: int
    dim: int
    baseline: FIDBaseline | None
    notes: list[str] = field(default_factory=list)
    ill_conditioned: bool = False  # scipy warned that a covariance product's square root is inaccurate


def _real_halves(
    n_real: int, codes: np.ndarray | None, n: int, repeats: int, rng: np.random.Generator
) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per repeat, two disjoint sets of real rows A, B, and the common size (at most n) they reach.

    codes None: a random permutation of images, A and B its first two blocks of n. codes (patient code
    per row): patients in random order (images in random order within a patient); A takes images from
    the first patients until it has n (the last patient's other images are dropped), B likewise from the
    next patients, so no patient is on both sides. A permutation supports n <= max_k min(C_k, T - C_k)
    (C_k: images in its first k patients, T: all images); n shrinks to the least over the repeats so
    that every repeat has the same n.
    """
    drawn = []
    for _ in range(repeats):
        order = rng.permutation(n_real)
        ends = np.arange(1, n_real + 1)  # C_k: where each unit's block ends (by image: every row)
        if codes is not None:
            rank = rng.permutation(int(codes.max()) + 1)
            order = order[np.argsort(rank[codes[order]], kind="stable")]
            ends = np.r_[np.flatnonzero(np.diff(codes[order]) != 0) + 1, n_real]
            n = min(n, int(np.minimum(ends, n_real - ends).max()))
        drawn.append((order, ends))
    halves = []
    for order, ends in drawn:
        start_b = int(ends[np.searchsorted(ends, n)])  # where A's last unit ends: B starts there
        halves.append((order[:n], order[start_b : start_b + n]))
    return n, halves


def compute_fid(
    real: np.ndarray | torch.Tensor,
    synthetic: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    baseline: bool = True,
    baseline_repeats: int = 3,
    real_groups: np.ndarray | None = None,
    seed: int = 0,
    eps: float = 1e-6,
) -> FIDResult:
    """FID between all real and all synthetic features, with the same-N real-vs-real baseline.

    Baseline: n = min(N_synthetic, N_real // 2); per repeat, two disjoint random real subsets A, B of
    n images and n random synthetic images S; reports FID(A, B) and FID(A, S). `real_groups` (patient
    id per real row) splits by patient (see `_real_halves`; n may shrink, which the baseline records);
    without it images are split at random. Skipped (with a note) when fewer than MIN_FID_IMAGES per
    side are possible.
    """
    meta = FeatureSpace.of(space)
    if baseline_repeats < 1:
        raise ConfigError(f"FID: baseline_repeats must be >= 1, got {baseline_repeats}")
    r, s = as_feature_sets("FID", MIN_FID_IMAGES, real=real, synthetic=synthetic)
    ids = check_patient_ids(real_groups, len(r), "FID real_groups:")
    value, offset, ill = _frechet(*feature_stats(r), *feature_stats(s), eps=eps)
    warned = [ill] if ill else []
    notes = []
    if offset:
        notes.append(f"singular covariance product: eps={eps} added to the diagonals")
    if min(len(r), len(s)) <= r.shape[1]:
        notes.append(
            f"N <= D={r.shape[1]}: covariances are rank-deficient and FID is biased upward; "
            "compare only with the same-N baseline"
        )
    base = None
    n_req = min(len(s), len(r) // 2)
    if baseline and n_req < MIN_FID_IMAGES:
        notes.append(f"baseline skipped: needs at least {2 * MIN_FID_IMAGES} real images, got {len(r)}")
    elif baseline:
        rng = np.random.default_rng(seed)
        codes = None if ids is None else np.unique(ids, return_inverse=True)[1]
        n, halves = _real_halves(len(r), codes, n_req, baseline_repeats, rng)
        split, n_patients = "by image", None
        note = "images split at random: a patient's images may fall on both sides, so real_vs_real is optimistic"
        if codes is not None:
            split, n_patients = "by patient", int(codes.max()) + 1
            note = (
                f"whole patients on each side: {n_patients} patients, the largest with "
                f"{np.bincount(codes).max()} of {len(r)} images"
            )
            if n < n_req:
                note += f"; n reduced from {n_req}: the patients cannot fill two disjoint halves of {n_req} images"
        if n < MIN_FID_IMAGES:
            notes.append(f"baseline skipped: at most {n} images per side (at least {MIN_FID_IMAGES} needed); {note}")
        else:
            rr, sr = [], []
            for a_rows, b_rows in halves:
                a = feature_stats(r[a_rows])
                for out, other in ((rr, r[b_rows]), (sr, s[rng.choice(len(s), n, replace=False)])):
                    value_b, _, ill_b = _frechet(*a, *feature_stats(other), eps=eps)
                    out.append(value_b)
                    warned += [ill_b] if ill_b else []
            base = FIDBaseline(
                n, baseline_repeats, float(np.mean(rr)), float(np.std(rr)), float(np.mean(sr)), float(np.std(sr)),
                split, n_req, n_patients, note,
            )  # fmt: skip
    if warned:
        notes.append(
            f"scipy warned that a covariance product is ill-conditioned ({warned[0]}): the matrix square root, and so "
            "the FID, is inaccurate: the features are degenerate (e.g. constant) or too few for their dimension"
        )
    return FIDResult(value, meta.name, meta.implementation, len(r), len(s), r.shape[1], base, notes, bool(warned))


# ----------------------------------------------------------------------------------------------- KID


@dataclass
class KIDResult(Result):
    kid: float  # mean over subsets of the unbiased MMD^2
    kid_std: float  # std over subsets
    n_subsets: int
    subset_size: int
    backbone: str
    implementation: str
    n_real: int
    n_synthetic: int


def compute_kid(
    real: np.ndarray | torch.Tensor,
    synthetic: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> KIDResult:
    """KID: unbiased MMD^2, kernel (x.y / D + 1)^3, over `n_subsets` random subsets of
    m = min(N_real, N_synthetic, subset_size) images per set, drawn without replacement.
    Kernel sums in float64 on `device` (a GPU makes the 100 x 3 Gram matrices cheap)."""
    meta = FeatureSpace.of(space)
    r, s = as_feature_sets("KID", 2, real=real, synthetic=synthetic)
    if n_subsets < 1 or subset_size < 2:
        raise ConfigError(f"KID needs n_subsets >= 1 and subset_size >= 2, got {n_subsets}, {subset_size}")
    d = r.shape[1]
    m = min(len(r), len(s), subset_size)
    rng = np.random.default_rng(seed)
    rt, st = (torch.from_numpy(a).to(device or "cpu") for a in (r, s))
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        x = st[torch.from_numpy(rng.choice(len(s), m, replace=False)).to(st.device)]
        y = rt[torch.from_numpy(rng.choice(len(r), m, replace=False)).to(rt.device)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        values[i] = float(within - 2 * kxy.sum() / m**2)
    return KIDResult(
        float(values.mean()),
        float(values.std()),
        n_subsets,
        m,
        meta.name,
        meta.implementation,
        len(r),
        len(s),
    )


# ---------------------------------------------------------------------------------------------- PRDC


@dataclass
class PRDCResult(Result):
    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    backbone: str
    implementation: str
    n_real: int
    n_synthetic: int


def compute_prdc(
    real: np.ndarray | torch.Tensor,
    synthetic: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    k: int = 5,
    device: str | torch.device | None = None,
    progress: bool = False,
    same_n: bool = False,
    seed: int = 0,
) -> PRDCResult:
    """Precision, recall, density, coverage (Naeem et al. 2020) as `prdc.compute_prdc`.

    The four values depend on the set sizes (a synthetic set 4x the real one covers more real images by
    number alone; a larger real set has tighter balls), so Naeem et al. compare equal sizes: with
    `same_n` the larger set is cut to the smaller one's size by a random subset drawn from `seed`, and
    `n_real` / `n_synthetic` say what was compared.

    Radii are leave-one-out k-NN distances within each set; all comparisons strict (`<`). Exact and
    chunked (no N x N matrix), so 10k x 10k runs in memory on a laptop and on a GPU with `device`.
    Identical to `prdc` unless two distances tie exactly in real arithmetic (quantised features, e.g.
    rounded values): then any float64 implementation decides `<` by rounding, prdc by sklearn's GEMM
    rounding and this one consistently with the same float64 value for each pair, so a few counts can
    differ.
    """
    meta = FeatureSpace.of(space)
    if k < 1:
        raise ConfigError(f"PRDC needs k >= 1, got {k}")
    r, s = as_feature_sets("PRDC", k + 1, real=real, synthetic=synthetic)
    if same_n:
        n = min(len(r), len(s))
        r, s = subsample_rows(r, n, np.random.default_rng(seed)), subsample_rows(s, n, np.random.default_rng(seed + 1))
    opts: dict[str, Any] = {"device": device, "progress": progress}
    real_radii = knn(r, r, k, exclude_self=True, **opts).distances[:, -1]
    fake_radii = knn(s, s, k, exclude_self=True, **opts).distances[:, -1]
    in_real = ball_counts(s, r, real_radii, **opts)  # synthetic points inside real k-NN balls
    in_fake = ball_counts(r, s, fake_radii, **opts)  # real points inside synthetic k-NN balls
    return PRDCResult(
        precision=float((in_real.counts > 0).mean()),
        recall=float((in_fake.counts > 0).mean()),
        density=float((1.0 / k) * in_real.counts.mean()),  # same float operations as prdc
        coverage=float(in_real.covered.mean()),
        k=k,
        backbone=meta.name,
        implementation=meta.implementation,
        n_real=len(r),
        n_synthetic=len(s),
    )


# ------------------------------------------------------------------------------------- per-class FID


@dataclass
class ClassFID(Result):
    name: str
    n_real: int
    n_synthetic: int
    result: FIDResult | None
    skipped: str | None  # why no FID was computed for this class


def _class_members(labels: np.ndarray, n: int, classes: list[str], what: str) -> list[np.ndarray]:
    """Row indices per class: multi-hot (N, K) 0/1/NaN -> rows with a 1; class ids (N,) -> rows == k."""
    labels = np.asarray(labels)
    if len(labels) != n:
        raise DataError(f"per-class FID: {len(labels)} {what} labels for {n} {what} feature rows")
    if labels.ndim == 2 and labels.shape[1] == len(classes):
        return [np.flatnonzero(labels[:, j] == 1) for j in range(len(classes))]
    if labels.ndim == 1:
        return [np.flatnonzero(labels == j) for j in range(len(classes))]
    raise DataError(
        f"per-class FID: {what} labels must be (N,) class ids or (N, {len(classes)}) multi-hot, "
        f"got shape {labels.shape}"
    )


def per_class_fid(
    real: np.ndarray | torch.Tensor,
    real_labels: np.ndarray,
    synthetic: np.ndarray | torch.Tensor,
    synthetic_labels: np.ndarray,
    space: FeatureSpace | FeatureExtractor,
    classes: list[str],
    *,
    min_images: int = 50,
    baseline: bool = True,
    real_groups: np.ndarray | None = None,
    seed: int = 0,
) -> list[ClassFID]:
    """FID per class on the images carrying that label (multi-label: an image counts for each label).

    A class with fewer than `min_images` real or synthetic images is skipped, with the reason and
    the number needed; each computed class gets its own same-N baseline when it has enough real images,
    split by patient when `real_groups` (patient id per real row) is given, as in `compute_fid`.
    """
    if min_images < MIN_FID_IMAGES:
        raise ConfigError(f"per-class FID: min_images must be >= {MIN_FID_IMAGES}, got {min_images}")
    r, s = as_feature_sets("per-class FID", 1, real=real, synthetic=synthetic)
    ids = check_patient_ids(real_groups, len(r), "per-class FID real_groups:")
    real_rows = _class_members(real_labels, len(r), classes, "real")
    syn_rows = _class_members(synthetic_labels, len(s), classes, "synthetic")
    out = []
    for j, name in enumerate(classes):
        nr, ns = len(real_rows[j]), len(syn_rows[j])
        if min(nr, ns) < min_images:
            reason = f"needs at least {min_images} real and {min_images} synthetic images, has {nr} and {ns}"
            out.append(ClassFID(name, nr, ns, None, reason))
            continue
        groups = None if ids is None else ids[real_rows[j]]
        res = compute_fid(r[real_rows[j]], s[syn_rows[j]], space, baseline=baseline, real_groups=groups, seed=seed + j)
        out.append(ClassFID(name, nr, ns, res, None))
    return out
