"""Membership inference: the shared scoring of every attack (`attack_result`) and the distance attack.

Distance attack (GAN-leaks style: Chen et al. 2020; Hilprecht et al. 2019): each real image is scored by its
distance to the nearest synthetic image; the attack guesses "training member" for small distances. The
density-ratio attack is in `density.py`, the attacks that read the trained model in `model_attack.py`.
Every attack reports the AUROC of members (training images) vs non-members (held-out images): 0.5 = no
leakage, 1 = training images are identified; and the TPR at 1% FPR, the figure the field asks for (Carlini
et al. 2022). The bootstrap interval resamples patients when patient ids are given (images of one patient
are correlated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.data import check_patient_ids
from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.neighbors import as_feature_sets, knn
from medsyn.evaluate.stats import bootstrap_counts, cluster_codes, grouped_auc, percentile_ci
from medsyn.io import ARRAY, Result

MIA_MIN_IMAGES = 10


@dataclass
class MIAResult(Result):
    """One membership-inference attack: each real image gets a score, higher = "more likely a training member".

    `attack` names how the score is made ("distance": -distance to the nearest synthetic image; "density
    ratio"; "discriminator"; "denoising loss"), `space` where (a feature space, or the model attacked)."""

    auroc: float
    ci_low: float
    ci_high: float
    ci_level: float
    tpr_at_1pct_fpr: float  # NaN (None in JSON) with fewer than 100 non-members
    n_members: int
    n_non_members: int
    n_synthetic: int  # synthetic images the attack used (0: it reads the model, not the set)
    n_bootstrap: int
    resampling: str  # "patients" or "images"
    space: str
    implementation: str
    attack: str
    score: str  # what the score is, for the report
    member_scores: np.ndarray = field(metadata=ARRAY)
    non_member_scores: np.ndarray = field(metadata=ARRAY)
    notes: list[str] = field(default_factory=list)
    # the same score, validation vs test non-members (`with_split_shift`): {"auroc", "ci_low", "ci_high"}
    split_shift: dict[str, float] | None = None


def with_split_shift(res: MIAResult, first: int, non_member_ids: Any = None, *, n_bootstrap: int = 1000,
                     level: float = 0.95, seed: int = 0) -> MIAResult:  # fmt: skip
    """`res` with the attack's own score compared between its two kinds of non-members: the first `first`
    (validation patients) against the rest (test patients), AUROC with a patient-bootstrap CI.

    Neither group is a member, so without a shift between the splits this is 0.5. Where it is not (official
    splits from different pools, e.g. MedMNIST's test split, which comes from another source split than train
    and validation), members and non-members differ by more than membership and part of the attack's AUROC is
    that shift; the verdict says so. Left as is when either group has fewer than MIA_MIN_IMAGES images."""
    non = res.non_member_scores
    if min(first, len(non) - first) < MIA_MIN_IMAGES:
        return res
    ids = None if non_member_ids is None else np.asarray(non_member_ids)
    shift = attack_result(non[:first], non[first:], attack=res.attack, score=res.score, space=res.space,
                          implementation=res.implementation, n_synthetic=res.n_synthetic,
                          member_ids=None if ids is None else ids[:first], non_member_ids=None if ids is None
                          else ids[first:], n_bootstrap=n_bootstrap, level=level, seed=seed)  # fmt: skip
    return replace(res, split_shift={"auroc": shift.auroc, "ci_low": shift.ci_low, "ci_high": shift.ci_high})


def attack_result(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    attack: str,
    score: str,
    space: str,
    implementation: str,
    n_synthetic: int,
    member_ids: Any = None,
    non_member_ids: Any = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    notes: list[str] | None = None,
) -> MIAResult:
    """AUROC of telling members from non-members by `score` (higher = member), with its CI and TPR at 1% FPR.

    Point estimate: sklearn `roc_auc_score`. Interval: percentile bootstrap over patients (when both id
    arrays are given) or images, `n_bootstrap` replicates, the same AUROC computed with resampling weights.
    AUROC does not depend on the member/non-member ratio, so the sets need not be the same size.
    """
    if n_bootstrap < 1 or not 0 < level < 1:
        raise ConfigError(f"membership inference needs n_bootstrap >= 1 and 0 < level < 1, got {n_bootstrap}, {level}")
    mem, non = np.asarray(member_scores, np.float64), np.asarray(non_member_scores, np.float64)
    bad = int((~np.isfinite(mem)).sum() + (~np.isfinite(non)).sum())
    if bad:
        raise DataError(f"membership inference ({attack}): {bad} scores are NaN or infinite")
    s = np.concatenate([mem, non])
    y = np.concatenate([np.ones(len(mem)), np.zeros(len(non))])
    auroc = float(roc_auc_score(y, s))

    mid = check_patient_ids(member_ids, len(mem), "members")
    nid = check_patient_ids(non_member_ids, len(non), "non-members")
    ids = None if mid is None or nid is None else np.concatenate([mid, nid])
    codes, n_units = cluster_codes(ids, len(y))
    uniq, inv = np.unique(s, return_inverse=True)
    reps = np.array(
        [
            grouped_auc(inv, len(uniq), w * y, w * (1 - y))
            for w in (counts[codes] for counts in bootstrap_counts(n_units, n_bootstrap, seed))
        ]
    )
    lo, hi = percentile_ci(reps, level)

    notes = list(notes or [])
    tpr_low = math.nan
    if len(non) >= 100:
        fpr, tpr, _ = roc_curve(y, s)
        tpr_low = float(tpr[fpr <= 0.01].max())
    else:
        notes.append(f"TPR at 1% FPR needs >= 100 non-members, got {len(non)}")
    if (member_ids is None) != (non_member_ids is None):
        notes.append("patient ids given for only one group: bootstrap resamples images")
    return MIAResult(
        auroc=auroc, ci_low=lo, ci_high=hi, ci_level=level, tpr_at_1pct_fpr=tpr_low, n_members=len(mem),
        n_non_members=len(non), n_synthetic=n_synthetic, n_bootstrap=n_bootstrap,
        resampling="images" if ids is None else "patients", space=space, implementation=implementation,
        attack=attack, score=score, member_scores=mem, non_member_scores=non, notes=notes,
    )  # fmt: skip


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
    """The distance attack: score = -distance to the nearest synthetic image (`attack_result` for the rest)."""
    meta = FeatureSpace.of(space)
    syn, mem, non = as_feature_sets(
        "membership inference", MIA_MIN_IMAGES, synthetic=synthetic, members=members, non_members=non_members
    )
    d_mem = knn(mem, syn, 1, device=device, progress=progress).distances[:, 0]
    d_non = knn(non, syn, 1, device=device, progress=progress).distances[:, 0]
    return attack_result(
        -d_mem, -d_non, attack="distance", score=f"-distance to the nearest of {len(syn)} synthetic images",
        space=meta.name, implementation=meta.implementation, n_synthetic=len(syn), member_ids=member_ids,
        non_member_ids=non_member_ids, n_bootstrap=n_bootstrap, level=level, seed=seed,
    )  # fmt: skip
