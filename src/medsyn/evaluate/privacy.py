"""Privacy of a synthetic set: does it copy, or reveal membership of, real TRAINING images?

Both checks work on features given by the caller (pixel space via `PixelFeatures`, or a feature
space such as `ClassifierFeatures`) and compare against held-out real images of patients the
generator never saw, which is what makes the numbers interpretable.

Distance to closest record (DCR, memorisation). For every synthetic image, the distance to its nearest
real training image; for every held-out real image, the same distance (the baseline: how close a new
image of the same population happens to fall). If the generator does not copy, synthetic images fall
below the held-out 1st / 5th percentile about as often as held-out images do: 1% / 5%. The result also
gives the closest synthetic/training pairs for a side-by-side grid.

The count of synthetic images below a held-out percentile is tested with the precedence (exceedance)
test (Nelson 1963, Technometrics 5:491; Balakrishnan & Ng 2006, "Precedence-Type Tests and
Applications"), which accounts for both samples: the threshold is itself an order statistic of m
held-out DCRs, and with no copying (synthetic and held-out DCRs exchangeable) the number X of n
synthetic DCRs below the j-th smallest held-out DCR follows the beta-binomial distribution
BetaBinomial(n, j, m + 1 - j), mean n j / (m + 1), exactly and whatever the distance distribution.
`np.percentile` interpolates, so the q-th percentile lies at or below the order statistic
j = ceil(q (m - 1)) + 1, and the p-value P(X' >= X) under that law is exact-or-conservative. A binomial
test against the nominal q treats the percentile as known; with m = 100 held-out images the 1st
percentile sits near the 2nd smallest DCR (expected 2% below it, with a standard deviation of 1.4
points), so that test warned or failed in 25 of 50 copy-free draws with 1000 synthetic images (this
test: 3 WARN, no FAIL).

Membership inference (distance-based, GAN-leaks style: Chen et al. 2020; Hilprecht et al. 2019).
Each real image is scored by its distance to the nearest synthetic image; the attack guesses
"training member" for small distances. AUROC of members (training images) vs non-members (held-out
images): 0.5 = no leakage, 1 = the synthetic set identifies its training images. The bootstrap
interval resamples patients when patient ids are given (images of one patient are correlated).

Verdict thresholds (heuristics stated in every verdict, for reviewers to judge):
* DCR: let f = fraction of synthetic images below the held-out 1st percentile, e its expected value
  without copying (j / (m + 1), about 1% for large m) and p the precedence test's one-sided p-value.
  FAIL if any synthetic image is identical to a training image (distance 0), or if f > 3x expected and
  p < 0.01 (systematic copies); WARN if f > 1.5x expected and p < 0.05; otherwise PASS.
* Membership inference: FAIL if AUROC >= 0.60 and the CI lies above 0.5; WARN if the CI lies above 0.5
  (detectable but small leakage), or below 0.5 (members and non-members differ in distribution, so the
  test is uninformative); otherwise PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import betabinom
from sklearn.metrics import roc_auc_score, roc_curve

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.fidelity import ARRAY, Result
from medsyn.evaluate.neighbors import as_feature_sets, knn
from medsyn.evaluate.utility import (
    bootstrap_counts,
    check_patient_ids,
    cluster_codes,
    grouped_auc,
    percentile_ci,
)

DCR_MIN_HOLDOUT = 20
"""Fewest held-out images for a DCR baseline (its 1st percentile is then still just the minimum)."""
DCR_RELIABLE_HOLDOUT = 100
DCR_WARN_RATIO, DCR_FAIL_RATIO = 1.5, 3.0
DCR_WARN_P, DCR_FAIL_P = 0.05, 0.01
DCR_TEST = "precedence test (Nelson 1963): synthetic count below a held-out order statistic ~ beta-binomial"
NEAREST_PATIENT_NOTE = 0.10  # noted when one patient is nearest to more synthetic images than this (and 2x held-out)
MIA_FAIL_AUROC = 0.60
MIA_MIN_IMAGES = 10


@dataclass
class DCRResult(Result):
    """Distance-to-closest-record summary. Distances are Euclidean in the named feature space."""

    space: str
    implementation: str
    n_synthetic: int
    n_train: int
    n_holdout: int
    threshold_p1: float  # 1st percentile of held-out DCRs
    threshold_p5: float
    fraction_below_p1: float  # synthetic images with DCR < threshold_p1
    fraction_below_p5: float
    test: str  # DCR_TEST; statistic: the counts below; sample sizes: n_synthetic and n_holdout
    count_below_p1: int  # the test statistic: synthetic images with DCR < threshold_p1
    count_below_p5: int
    expected_p1: float  # expected fraction_below_p1 without copying, j / (n_holdout + 1) (~0.01 for large m)
    expected_p5: float
    pvalue_p1: float  # one-sided precedence test: more synthetic images below than without copying
    pvalue_p5: float
    n_identical: int  # synthetic images at distance exactly 0 from a training image
    median_synthetic: float
    median_holdout: float
    closest: list[dict[str, Any]]  # [{synthetic_index, train_index, distance}], nearest first
    # With training patient ids: the training patient nearest to most synthetic images, as shares (never the
    # id): of synthetic images, of held-out images (the baseline) and of the training images themselves.
    nearest_patient: dict[str, float] | None
    synthetic_distances: np.ndarray = field(metadata=ARRAY)  # (n_synthetic,)
    synthetic_nearest: np.ndarray = field(metadata=ARRAY)  # train index of each synthetic image's nearest
    holdout_distances: np.ndarray = field(metadata=ARRAY)  # (n_holdout,)
    notes: list[str] = field(default_factory=list)


def precedence_test(count: int, n_synthetic: int, n_holdout: int, percentile: float) -> tuple[float, float]:
    """One-sided p-value P(X >= count) and expected fraction below the held-out `percentile` (0-100).

    X: synthetic DCRs below the held-out percentile when synthetic and held-out DCRs are exchangeable
    (no copying). `np.percentile` (linear) lies at or below the j-th smallest held-out DCR, j =
    ceil(q (m - 1)) + 1, so X is at most BetaBinomial(n, j, m + 1 - j): exact-or-conservative.
    """
    q = percentile / 100
    j = math.ceil(q * (n_holdout - 1) - 1e-9) + 1  # tolerance: q (m - 1) may be an integer up to rounding
    pvalue = float(betabinom.sf(count - 1, n_synthetic, j, n_holdout + 1 - j))
    return pvalue, j / (n_holdout + 1)


def distance_to_closest_record(
    synthetic: np.ndarray | torch.Tensor,
    train: np.ndarray | torch.Tensor,
    holdout: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    n_closest: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
    train_patient_ids: Any = None,
) -> DCRResult:
    """DCR of synthetic and held-out images to the training images (see module docstring).

    `train_patient_ids` adds `nearest_patient`: a generator that collapses onto the look of one training
    patient (often the one with the most images) puts many synthetic images next to that patient's images,
    which the per-image thresholds may not show; unseen patients' images give the expected share.

    The p-values account for the held-out percentiles' own uncertainty (precedence test); with few
    held-out images that uncertainty is large, so only a large excess can be detected, which a note says.
    """
    meta = FeatureSpace.of(space)
    syn, tr, ho = as_feature_sets("DCR", 1, synthetic=synthetic, train=train, holdout=holdout)
    if len(ho) < DCR_MIN_HOLDOUT:
        raise DataError(f"DCR needs at least {DCR_MIN_HOLDOUT} held-out real images, got {len(ho)}")
    syn_nn = knn(syn, tr, 1, device=device, progress=progress)
    d_syn, nearest = syn_nn.distances[:, 0], syn_nn.indices[:, 0]
    ho_nn = knn(ho, tr, 1, device=device, progress=progress)
    d_ho = ho_nn.distances[:, 0]
    t1, t5 = (float(t) for t in np.percentile(d_ho, [1, 5]))
    below = [int((d_syn < t).sum()) for t in (t1, t5)]
    tests = [precedence_test(b, len(syn), len(ho), q) for b, q in zip(below, (1, 5), strict=True)]
    order = np.argsort(d_syn, kind="stable")[: max(0, n_closest)]
    notes = []
    concentration = None
    ids = check_patient_ids(train_patient_ids, len(tr), "DCR training")
    if ids is not None and len(np.unique(ids)) < len(ids):  # one image per patient: nothing to concentrate on
        concentration = nearest_patient_shares(ids, nearest, ho_nn.indices[:, 0])
        if concentration["synthetic"] > max(NEAREST_PATIENT_NOTE, 2 * concentration["holdout"]):
            notes.append(
                f"{100 * concentration['synthetic']:.0f}% of synthetic images have their nearest training image "
                f"in one patient (held-out images: {100 * concentration['holdout']:.0f}%; that patient has "
                f"{100 * concentration['training']:.1f}% of the training images): the generator may reproduce "
                "that patient's look, or its images crowd around a few real ones (low diversity); inspect the "
                "closest pairs and the re-identification result"
            )
    if len(ho) < DCR_RELIABLE_HOLDOUT:
        notes.append(
            f"only {len(ho)} held-out images: the 1st-percentile threshold is poorly estimated, so the test "
            f"detects only a large excess (use >= {DCR_RELIABLE_HOLDOUT})"
        )
    return DCRResult(
        space=meta.name,
        implementation=meta.implementation,
        n_synthetic=len(syn),
        n_train=len(tr),
        n_holdout=len(ho),
        threshold_p1=t1,
        threshold_p5=t5,
        fraction_below_p1=below[0] / len(syn),
        fraction_below_p5=below[1] / len(syn),
        test=DCR_TEST,
        count_below_p1=below[0],
        count_below_p5=below[1],
        expected_p1=tests[0][1],
        expected_p5=tests[1][1],
        pvalue_p1=tests[0][0],
        pvalue_p5=tests[1][0],
        n_identical=int((d_syn == 0).sum()),
        median_synthetic=float(np.median(d_syn)),
        median_holdout=float(np.median(d_ho)),
        closest=[
            {"synthetic_index": int(i), "train_index": int(nearest[i]), "distance": float(d_syn[i])} for i in order
        ],
        notes=notes,
        nearest_patient=concentration,
        synthetic_distances=d_syn,
        synthetic_nearest=nearest,
        holdout_distances=d_ho,
    )


def nearest_patient_shares(train_ids: np.ndarray, syn_nearest: np.ndarray, holdout_nearest: np.ndarray) -> dict:
    """Shares of synthetic / held-out / training images that belong to (or lie nearest to) the training
    patient nearest to the most synthetic images."""
    patients, codes = np.unique(train_ids, return_inverse=True)
    counts = np.bincount(codes[syn_nearest], minlength=len(patients))
    top = int(np.argmax(counts))
    return {
        "synthetic": float(counts[top] / len(syn_nearest)),
        "holdout": float(np.mean(codes[holdout_nearest] == top)),
        "training": float(np.mean(codes == top)),
    }


@dataclass
class MIAResult(Result):
    """Distance-based membership inference: score = -distance to the nearest synthetic image."""

    auroc: float
    ci_low: float
    ci_high: float
    ci_level: float
    tpr_at_1pct_fpr: float  # NaN (None in JSON) with fewer than 100 non-members
    n_members: int
    n_non_members: int
    n_synthetic: int
    n_bootstrap: int
    resampling: str  # "patients" or "images"
    space: str
    implementation: str
    member_distances: np.ndarray = field(metadata=ARRAY)
    non_member_distances: np.ndarray = field(metadata=ARRAY)
    notes: list[str] = field(default_factory=list)


def membership_inference(
    synthetic: np.ndarray | torch.Tensor,
    members: np.ndarray | torch.Tensor,
    non_members: np.ndarray | torch.Tensor,
    space: FeatureSpace | FeatureExtractor,
    *,
    member_ids: Any = None,
    non_member_ids: Any = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> MIAResult:
    """AUROC of telling training members from held-out non-members by distance to the synthetic set.

    Point estimate: sklearn `roc_auc_score`. Interval: percentile bootstrap over patients (when both id
    arrays are given) or images, `n_bootstrap` replicates, the same AUROC computed with resampling weights.
    AUROC does not depend on the member/non-member ratio, so the sets need not be the same size.
    """
    meta = FeatureSpace.of(space)
    if n_bootstrap < 1 or not 0 < level < 1:
        raise ConfigError(f"membership inference needs n_bootstrap >= 1 and 0 < level < 1, got {n_bootstrap}, {level}")
    syn, mem, non = as_feature_sets(
        "membership inference", MIA_MIN_IMAGES, synthetic=synthetic, members=members, non_members=non_members
    )
    d_mem = knn(mem, syn, 1, device=device, progress=progress).distances[:, 0]
    d_non = knn(non, syn, 1, device=device, progress=progress).distances[:, 0]
    score = -np.concatenate([d_mem, d_non])
    y = np.concatenate([np.ones(len(mem)), np.zeros(len(non))])
    auroc = float(roc_auc_score(y, score))

    mid = check_patient_ids(member_ids, len(mem), "members")
    nid = check_patient_ids(non_member_ids, len(non), "non-members")
    ids = None if mid is None or nid is None else np.concatenate([mid, nid])
    codes, n_units = cluster_codes(ids, len(y))
    uniq, inv = np.unique(score, return_inverse=True)
    reps = np.array(
        [
            grouped_auc(inv, len(uniq), w * y, w * (1 - y))
            for w in (counts[codes] for counts in bootstrap_counts(n_units, n_bootstrap, seed))
        ]
    )
    lo, hi = percentile_ci(reps, level)

    notes = []
    tpr_low = math.nan
    if len(non) >= 100:
        fpr, tpr, _ = roc_curve(y, score)
        tpr_low = float(tpr[fpr <= 0.01].max())
    else:
        notes.append(f"TPR at 1% FPR needs >= 100 non-members, got {len(non)}")
    if (member_ids is None) != (non_member_ids is None):
        notes.append("patient ids given for only one group: bootstrap resamples images")
    return MIAResult(
        auroc=auroc,
        ci_low=lo,
        ci_high=hi,
        ci_level=level,
        tpr_at_1pct_fpr=tpr_low,
        n_members=len(mem),
        n_non_members=len(non),
        n_synthetic=len(syn),
        n_bootstrap=n_bootstrap,
        resampling="images" if ids is None else "patients",
        space=meta.name,
        implementation=meta.implementation,
        notes=notes,
        member_distances=d_mem,
        non_member_distances=d_non,
    )


# ------------------------------------------------------------------------------------------ verdicts


@dataclass
class Verdict(Result):
    check: str
    level: str  # "pass" | "warn" | "fail"
    reason: str


def dcr_verdict(res: DCRResult) -> Verdict:
    """Copies? Thresholds in the module docstring."""
    check = f"dcr ({res.space})"
    f, p, ratio = res.fraction_below_p1, res.pvalue_p1, res.fraction_below_p1 / res.expected_p1
    stats = (
        f"{100 * f:.2f}% of {res.n_synthetic} synthetic images are closer to a training image than the "
        f"held-out 1st percentile (expected {100 * res.expected_p1:.1f}% without copying given "
        f"{res.n_holdout} held-out images; precedence test p = {p:.2g})"
    )
    if res.n_identical:
        return Verdict(check, "fail", f"{res.n_identical} synthetic images are identical to training images; {stats}")
    if ratio > DCR_FAIL_RATIO and p < DCR_FAIL_P:
        return Verdict(check, "fail", f"{stats}: more than {DCR_FAIL_RATIO:g}x expected, likely memorised copies")
    if ratio > DCR_WARN_RATIO and p < DCR_WARN_P:
        return Verdict(check, "warn", f"{stats}: more than {DCR_WARN_RATIO:g}x expected; inspect the closest pairs")
    return Verdict(check, "pass", f"{stats}: consistent with no copying")


def mia_verdict(res: MIAResult) -> Verdict:
    """Membership leakage? Thresholds in the module docstring."""
    check = f"membership inference ({res.space})"
    stats = (
        f"AUROC {res.auroc:.3f} ({100 * res.ci_level:g}% CI {res.ci_low:.3f}-{res.ci_high:.3f}, "
        f"{res.n_members} members vs {res.n_non_members} non-members)"
    )
    if res.ci_low > 0.5 and res.auroc >= MIA_FAIL_AUROC:
        return Verdict(check, "fail", f"{stats}: training images can be told apart from unseen ones")
    if res.ci_low > 0.5:
        return Verdict(check, "warn", f"{stats}: small but detectable membership leakage")
    if res.ci_high < 0.5:
        return Verdict(
            check,
            "warn",
            f"{stats}: held-out images are closer to the synthetic set than training images are, so the "
            "two real sets differ in distribution and this test cannot detect leakage",
        )
    return Verdict(check, "pass", f"{stats}: no detectable membership leakage")
