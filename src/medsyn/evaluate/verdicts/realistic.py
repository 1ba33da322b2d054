"""Realistic?: diversity of the synthetic set, FID against its same-N real baseline, PRDC, and when the feature
backbone cannot judge."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medsyn.evaluate.verdicts.base import _SEVERITY, Verdict, _graded, _lower, overall
from medsyn.evaluate.verdicts.thresholds import (
    BACKBONE_MIN_AUROC,
    DIVERSITY_FAIL,
    DIVERSITY_WARN,
    FID_PASS,
    FID_WARN,
    PRDC_PASS,
    PRDC_WARN,
)


def backbone_problem(backbone: Mapping[str, Any], utility: Mapping[str, Any], n: int) -> str | None:
    """Why the feature space cannot judge realism (None: it can): a real-trained classifier near chance, or
    fewer images than feature dimensions."""
    dim = backbone.get("dim")
    advice = "train the classifier longer or on more real images, or pass --features with local weights"
    if dim and n <= dim:
        return (f"only N = {n} images against D = {dim} feature dimensions: the covariances and neighbourhoods of "
                f"FID and PRDC are degenerate; use at least {dim + 1} images per side, or {advice}")  # fmt: skip
    if backbone.get("trained_on") != "real training split":
        return None
    if "trtr" in utility:
        auc, low = utility["trtr"]["mean_auroc"], _lower(utility["trtr"], "mean_auroc", "mean_ci_low")
        where = "held-out patients"
    else:
        auc = low = float(backbone.get("training", {}).get("best_val_mean_auroc", math.nan))
        where = "the validation split"
    if not (auc >= BACKBONE_MIN_AUROC and low > 0.5):
        return (f"the feature backbone, a classifier trained here on the real images, reaches only mean AUROC "
                f"{auc:.3f} on {where} (CI lower bound {low:.3f}): its features barely tell the classes apart, so "
                f"distances in them say little about realism; {advice}")  # fmt: skip
    return None


def diversity_verdict(div: Mapping[str, Any]) -> Verdict:
    check = f"diversity ({div['space']})"
    m = div["synthetic_modes"] / max(div["real_modes"], 1)
    reason = (
        f"{div['synthetic_modes']} distinct modes among {div['n']} synthetic images vs {div['real_modes']} among "
        f"{div['n']} real ones ({100 * m:.0f}%); {100 * div['near_duplicate_fraction']:.0f}% of synthetic images "
        f"have a near-duplicate in the set; median nearest-other distance {div['synthetic_median_nn']:.3g} "
        f"vs {div['real_median_nn']:.3g} for real images"
    )
    if m < DIVERSITY_FAIL:
        return Verdict(check, "fail", f"{reason}: the generator has collapsed onto a few images")
    if m < DIVERSITY_WARN:
        return Verdict(check, "warn", f"{reason}: less varied than real images")
    return Verdict(check, "pass", f"{reason}: as varied as real images")


def realistic_verdict(fidelity: Mapping[str, Any]) -> Verdict:
    check = f"fidelity ({fidelity.get('backbone', {}).get('name', '?')})"
    if "skipped" in fidelity:
        return Verdict(check, "n/a", fidelity["skipped"])
    fid, prdc = fidelity["fid"], fidelity["prdc"]
    base = fid.get("baseline")
    levels = []
    if base:
        rr, sr = base["real_vs_real"], base["synthetic_vs_real"]
        q = sr / rr if rr > 0 else math.inf
        levels.append(_graded(q, FID_PASS, FID_WARN, False))
        split = base.get("split", "by image")
        halves = "of whole patients" if split == "by patient" else "(split by image: patients may straddle them)"
        fid_text = f"FID {sr:.3g} vs {rr:.3g} between two real subsets {halves} at the same N={base['n']} ({q:.1f}x)"
    else:
        fid_text = f"FID {fid['fid']:.3g} (no same-N real baseline: {'; '.join(fid.get('notes', []))})"
    levels.append(_graded(min(prdc["precision"], prdc["coverage"]), PRDC_PASS, PRDC_WARN, True))
    reason = (
        f"{fid_text}; {100 * prdc['precision']:.0f}% of synthetic images lie within the real images' "
        f"neighbourhoods (precision) and they cover {100 * prdc['coverage']:.0f}% of the real images "
        f"(coverage, k={prdc['k']})"
    )
    if prdc["precision"] == 0 and prdc["coverage"] == 0:
        reason += f". {NO_RESEMBLANCE}"
    level = max(levels, key=_SEVERITY.__getitem__)
    if fidelity.get("not_assessable"):
        return Verdict(check, "n/a", f"not assessable: {fidelity['not_assessable']} (measured: {reason})")
    return Verdict(check, level, reason)


NO_RESEMBLANCE = ("No synthetic image lies near any real image and no real image has a synthetic one near it: "
                  "the images do not resemble the real ones (an untrained or failed generator?)")  # fmt: skip


def realistic_overall(fidelity: Verdict, diversity: Verdict | None) -> Verdict:
    """A collapsed set fails whatever the features say; otherwise an unassessable backbone makes the answer
    NOT ASSESSED rather than the diversity check's PASS."""
    if diversity is not None and diversity.level == "fail":
        return Verdict("Realistic?", "fail", f"{diversity.reason}; {fidelity.check}: {fidelity.reason}")
    if fidelity.level == "n/a":
        return Verdict("Realistic?", "n/a", fidelity.reason)
    return overall("Realistic?", [fidelity] + ([diversity] if diversity is not None else []))
