"""Membership inference (distance-based, GAN-leaks style: Chen et al. 2020; Hilprecht et al. 2019).

Each real image is scored by its distance to the nearest synthetic image; the attack guesses
"training member" for small distances. AUROC of members (training images) vs non-members (held-out
images): 0.5 = no leakage, 1 = the synthetic set identifies its training images. The bootstrap
interval resamples patients when patient ids are given (images of one patient are correlated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from medsyn.errors import ConfigError
from medsyn.evaluate.data import check_patient_ids
from medsyn.evaluate.features import FeatureExtractor, FeatureSpace
from medsyn.evaluate.neighbors import as_feature_sets, knn
from medsyn.evaluate.stats import bootstrap_counts, cluster_codes, grouped_auc, percentile_ci
from medsyn.io import ARRAY, Result

MIA_MIN_IMAGES = 10


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
