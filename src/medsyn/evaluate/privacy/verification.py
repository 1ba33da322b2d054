"""Same-patient verification: balanced pair sampling and the attacker's AUROC on held-out patients.

    ver = verification_auroc(model, test_x, test_pids)           # AUROC + CI, thresholds at 1% / 5% FPR
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medsyn.errors import DataError
from medsyn.evaluate.data import check_images, check_patient_ids
from medsyn.evaluate.stats import bootstrap_counts, grouped_auc, percentile_ci

if TYPE_CHECKING:
    from medsyn.evaluate.privacy.reid import ReidModel


class PairSampler:
    """Deterministic balanced pair sampling from patient ids, uniform over patients.

    Uniform over patients (not images) so that a patient with 60 follow-ups does not dominate.
    """

    def __init__(self, patient_ids: np.ndarray, seed: int) -> None:
        uniq, codes = np.unique(patient_ids, return_inverse=True)
        self.order = np.argsort(codes, kind="stable")  # image indices grouped by patient
        self.counts = np.bincount(codes, minlength=len(uniq))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.multi = np.flatnonzero(self.counts >= 2)
        self.n_patients = len(uniq)
        self.rng = np.random.default_rng(seed)

    def positives(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.rng.choice(self.multi, n)
        i = self.rng.integers(0, self.counts[p])
        j = self.rng.integers(0, self.counts[p] - 1)
        j = j + (j >= i)  # a different image of the same patient
        return self.order[self.starts[p] + i], self.order[self.starts[p] + j]

    def negatives(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.rng.integers(0, self.n_patients, n)
        q = (p + 1 + self.rng.integers(0, self.n_patients - 1, n)) % self.n_patients  # q != p
        return (
            self.order[self.starts[p] + self.rng.integers(0, self.counts[p])],
            self.order[self.starts[q] + self.rng.integers(0, self.counts[q])],
        )

    def all_positives(self, max_per_patient: int) -> tuple[np.ndarray, np.ndarray]:
        """Every same-patient pair, at most `max_per_patient` (a random subset) per patient."""
        ia, ib = [], []
        for p in self.multi:
            members = self.order[self.starts[p] : self.starts[p] + self.counts[p]]
            a, b = np.triu_indices(len(members), k=1)
            if len(a) > max_per_patient:
                keep = np.sort(self.rng.choice(len(a), max_per_patient, replace=False))
                a, b = a[keep], b[keep]
            ia.append(members[a])
            ib.append(members[b])
        return np.concatenate(ia), np.concatenate(ib)


def check_pairs_possible(ids: np.ndarray, what: str, seed: int) -> PairSampler:
    sampler = PairSampler(ids, seed)
    if sampler.n_patients < 2 or len(sampler.multi) == 0:
        raise DataError(
            f"{what} needs at least 2 patients and one patient with >= 2 images; got "
            f"{sampler.n_patients} patients, {len(sampler.multi)} with several images"
        )
    return sampler


def check_disjoint(train_ids: Sequence[str] | frozenset[str], other: np.ndarray, what: str) -> None:
    shared = sorted(set(other.tolist()) & set(train_ids))
    if shared:
        raise DataError(
            f"{what}: {len(shared)} patient(s) were seen in re-id training (e.g. {shared[0]!r}); "
            "use held-out patients"
        )


def verification_auroc(
    model: ReidModel,
    images: Any,
    patient_ids: Sequence[Any],
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    fpr_targets: Sequence[float] = (0.01, 0.05),
    max_pos_pairs_per_patient: int = 50,
    n_negative_pairs: int = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """Same-patient verification AUROC on pairs of held-out patients, with a patient-bootstrap CI.

    Positives: every same-patient pair (at most `max_pos_pairs_per_patient` per patient, so one patient
    with many follow-ups cannot dominate); negatives: random different-patient pairs. The CI resamples
    patients: a positive pair counts k times when its patient is drawn k times, a negative k_a * k_b.
    Also returns the pair-level thresholds (logits) at the FPR targets, with the TPR they give.
    Patients the model was trained on are refused (DataError); a model from `load_reid` does not know them,
    and the result's `notes` say that this check did not run.
    """
    images = check_images(images, "re-id verification images")
    ids = check_patient_ids(patient_ids, len(images), "re-id verification")
    assert ids is not None
    check_disjoint(model.train_patients, ids, "verification_auroc")
    notes = [] if model.train_patients_known else [
        f"the re-id model was loaded from a file without its {model.history.get('n_patients', '?')} training patient "
        "ids (not stored, for privacy): these verification patients could not be checked against them; an AUROC "
        "on training patients would be optimistic"
    ]  # fmt: skip
    sampler = check_pairs_possible(ids, "verification", seed)
    pa, pb = sampler.all_positives(max_pos_pairs_per_patient)
    na, nb = sampler.negatives(n_negative_pairs)
    emb = model.embed(images)
    s_pos, s_neg = model.score_pairs(emb, pa, pb), model.score_pairs(emb, na, nb)
    scores = np.concatenate([s_pos, s_neg])
    y = np.concatenate([np.ones(len(s_pos)), np.zeros(len(s_neg))])
    uniq, inv = np.unique(scores, return_inverse=True)
    uniq_ids, codes = np.unique(ids, return_inverse=True)
    ca, cb = codes[np.concatenate([pa, na])], codes[np.concatenate([pb, nb])]

    def auc(counts: np.ndarray) -> float:
        w = np.where(y == 1, counts[ca], counts[ca] * counts[cb])
        return grouped_auc(inv, len(uniq), w * y, w * (1 - y))

    point = auc(np.ones(len(uniq_ids)))
    reps = np.array([auc(c) for c in bootstrap_counts(len(uniq_ids), n_bootstrap, seed)])
    lo, hi = percentile_ci(reps, ci_level)
    thresholds = {}
    for fpr in fpr_targets:
        thr = float(np.quantile(s_neg, 1 - fpr, method="higher"))
        thresholds[str(fpr)] = {
            "threshold": thr,
            "fpr": float((s_neg > thr).mean()),
            "tpr": float((s_pos > thr).mean()),
        }
    return {
        "auroc": point,
        "ci_low": lo,
        "ci_high": hi,
        "ci_level": ci_level,
        "n_bootstrap": n_bootstrap,
        "ci_method": "percentile bootstrap over patients",
        "n_images": len(images),
        "n_patients": len(uniq_ids),
        "n_positive_pairs": len(s_pos),
        "n_negative_pairs": len(s_neg),
        "thresholds": thresholds,
        "score": "same-patient logit; a pair is linked when score > threshold",
        **({"notes": notes} if notes else {}),
    }
