"""Linkage: every synthetic image tied to its best-matching training patient by the re-identification network.

    res = match_synthetic(model, synth_x, train_x, train_pids, ver, heldout_images=test_x)

See `medsyn.evaluate.privacy.reid` for the network and why the gallery-calibrated thresholds matter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsyn.errors import ConfigError
from medsyn.evaluate.data import check_images, check_patient_ids
from medsyn.evaluate.privacy.reid import ReidModel
from medsyn.evaluate.stats import wilson_ci


def _fraction(flags: np.ndarray, level: float) -> dict[str, Any]:
    k, n = int(flags.sum()), len(flags)
    lo, hi = wilson_ci(k, n, level)
    return {"fraction": k / n if n else math.nan, "n_matched": k, "n": n, "ci_low": lo, "ci_high": hi}


def match_synthetic(
    model: ReidModel,
    synthetic_images: Any,
    train_images: Any,
    train_patient_ids: Sequence[Any],
    threshold: float | Mapping[str, Any],
    *,
    at_fpr: float = 0.01,
    heldout_images: Any = None,
    fpr_targets: Sequence[float] = (0.01, 0.05),
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Link each synthetic image to its best-matching training patient and flag scores above `threshold`.

    `threshold`: a logit, or the result of `verification_auroc` (its threshold at `at_fpr` is used).
    Per-image arrays (numpy): best_patient, best_train_index, best_score, matched. With `heldout_images`
    (real images of patients NOT in the training set) also the false-link baseline at that threshold and
    gallery-calibrated thresholds (best-match scores of held-out images) at `fpr_targets`.
    """
    if isinstance(threshold, Mapping):
        entry = threshold.get("thresholds", {}).get(str(at_fpr))
        if entry is None:
            raise ConfigError(
                f"verification result has no threshold at FPR {at_fpr}; "
                f"it has {sorted(threshold.get('thresholds', {}))}"
            )
        thr, source = float(entry["threshold"]), f"pair-level FPR {at_fpr} on held-out real pairs"
    else:
        thr, source = float(threshold), "given"
    synthetic_images = check_images(synthetic_images, "synthetic images")
    train_images = check_images(train_images, "re-id gallery (training) images")
    train_ids = check_patient_ids(train_patient_ids, len(train_images), "re-id gallery")
    assert train_ids is not None
    gallery = model.embed(train_images)
    best, arg = model.best_match(model.embed(synthetic_images), gallery)
    matched = best > thr
    out: dict[str, Any] = {
        "threshold": thr,
        "threshold_source": source,
        "synthetic": _fraction(matched, ci_level),
        "n_train_images": len(train_images),
        "n_train_patients": len(np.unique(train_ids)),
        "n_train_patients_linked": len(np.unique(train_ids[arg[matched]])),
        "best_patient": train_ids[arg],
        "best_train_index": arg,
        "best_score": best,
        "matched": matched,
    }
    if heldout_images is not None:
        h_best, _ = model.best_match(model.embed(check_images(heldout_images, "held-out images")), gallery)
        out["heldout_baseline"] = _fraction(h_best > thr, ci_level)
        out["gallery_calibrated"] = {}
        for fpr in fpr_targets:
            g_thr = float(np.quantile(h_best, 1 - fpr, method="higher"))
            out["gallery_calibrated"][str(fpr)] = {
                "threshold": g_thr,
                "heldout_fraction": float((h_best > g_thr).mean()),
                "synthetic": _fraction(best > g_thr, ci_level),
            }
    return out
