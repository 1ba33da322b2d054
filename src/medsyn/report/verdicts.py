"""Plain-language verdicts for the three questions a reviewer asks: Useful? Realistic? Private?

Every verdict is pass / warn / fail (or n/a when it could not be assessed) with a one-line reason that
quotes the numbers, and every threshold used is listed in `THRESHOLDS`, which the report prints. The
thresholds are heuristics chosen to be stated and argued about, not universal standards; the metric
tables next to each verdict let a reviewer apply their own.
"""

from __future__ import annotations

import math
from typing import Any

from medsyn.evaluate.privacy import (
    DCR_FAIL_P,
    DCR_FAIL_RATIO,
    DCR_WARN_P,
    DCR_WARN_RATIO,
    MIA_FAIL_AUROC,
    Verdict,
)
from medsyn.evaluate.reid import wilson_ci

USEFUL_PASS, USEFUL_WARN = 0.8, 0.5
"""Share of the real-trained classifier's above-chance AUROC that the synthetic-trained one keeps."""
FID_PASS, FID_WARN = 2.0, 5.0
"""FID(real, synthetic) / FID(real, real) at the same N."""
PRDC_PASS, PRDC_WARN = 0.5, 0.25
"""Precision and coverage (k = 5)."""
REID_FPR = 0.05
"""Re-identification: threshold at which 5% of held-out (unseen) patients' images are linked."""
REID_WARN_RATIO, REID_FAIL_RATIO = 1.5, 3.0
REID_WEAK_AUROC = 0.6
"""Below this verification AUROC (CI lower bound) the attacker is too weak for its silence to count."""

THRESHOLDS: dict[str, list[str]] = {
    "Useful?": [
        "r = (TSTR - 0.5) / (TRTR - 0.5): the share of the real-trained classifier's above-chance mean AUROC "
        "that a classifier trained only on synthetic images keeps, both tested on held-out real patients",
        f"PASS r >= {USEFUL_PASS}, WARN {USEFUL_WARN} <= r < {USEFUL_PASS}, FAIL r < {USEFUL_WARN}",
        "n/a when the real-trained classifier is not clearly above chance (CI lower bound <= 0.5)",
    ],
    "Realistic?": [
        "q = FID(real, synthetic) / FID(real, real) at the same N (two disjoint real subsets, whole patients on "
        f"each side when patient ids are known): PASS q <= {FID_PASS:g}, WARN q <= {FID_WARN:g}, FAIL q > {FID_WARN:g}",
        f"precision and coverage (k = 5): PASS both >= {PRDC_PASS}, WARN both >= {PRDC_WARN}, else FAIL",
        "the verdict is the worst of the two; FID values are comparable only at the same backbone and N",
    ],
    "Private?": [
        "DCR (pixel and feature space): f = share of synthetic images closer to a training image than the "
        "held-out 1st percentile (expected about 1% without copying; more with few held-out images); p from the "
        "precedence test, which allows for the uncertainty of that percentile (Nelson 1963); FAIL if any "
        f"synthetic image equals a training image or f > {DCR_FAIL_RATIO:g}x expected with p < {DCR_FAIL_P}; "
        f"WARN if f > {DCR_WARN_RATIO:g}x expected with p < {DCR_WARN_P}",
        f"membership inference: FAIL if AUROC >= {MIA_FAIL_AUROC} with its 95% CI above 0.5; WARN if the CI "
        "excludes 0.5 on either side",
        f"re-identification: at the threshold that links {100 * REID_FPR:g}% of held-out patients' images to a "
        f"training patient, FAIL if the synthetic share is > {REID_FAIL_RATIO:g}x the held-out share and its 95% "
        "CI lies above the held-out share's 95% Wilson interval (over held-out patients), WARN likewise at "
        f"> {REID_WARN_RATIO:g}x; WARN when the attacker is weak (verification AUROC CI lower bound < "
        f"{REID_WEAK_AUROC})",
        "the verdict is the worst check; a check that could not run makes it at best WARN",
    ],
}

_SEVERITY = {"pass": 0, "n/a": 1, "warn": 1, "fail": 2}


def _graded(value: float, pass_at: float, warn_at: float, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "n/a"
    if not higher_is_better:
        value, pass_at, warn_at = -value, -pass_at, -warn_at
    return "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"


def _lower(entry: dict[str, Any], point: str, low: str) -> float:
    """The CI lower bound, or the point estimate when no bootstrap was run."""
    value = entry.get(low)
    return float(entry[point]) if value is None or not math.isfinite(value) else float(value)


def useful_verdict(utility: dict[str, Any]) -> Verdict:
    check = "utility (TSTR vs TRTR)"
    if "skipped" in utility:
        return Verdict(check, "n/a", utility["skipped"])
    trtr, tstr = utility["trtr"], utility["tstr"]
    if not _lower(trtr, "mean_auroc", "mean_ci_low") > 0.5:
        return Verdict(
            check, "n/a",
            f"the classifier trained on real images reaches only mean AUROC {trtr['mean_auroc']:.3f} on held-out "
            "patients (not clearly above chance), so there is no real performance to compare against; "
            "train longer or on more data",
        )  # fmt: skip
    ratio = utility["ratio"]["tstr_over_trtr_above_chance"]
    r = float(ratio["value"])
    gain = utility["augmentation_gain"]
    reason = (
        f"trained on synthetic images only, the classifier reaches mean AUROC {tstr['mean_auroc']:.3f} vs "
        f"{trtr['mean_auroc']:.3f} when trained on real images: it keeps {100 * r:.0f}% "
        f"(95% CI {_pct(ratio.get('ci_low'))}-{_pct(ratio.get('ci_high'))}) of the above-chance performance; "
        f"adding the synthetic images to the real ones changes mean AUROC by {gain['mean']:+.3f} "
        f"(CI {_num(gain.get('mean_ci_low'))} to {_num(gain.get('mean_ci_high'))})"
    )
    return Verdict(check, _graded(r, USEFUL_PASS, USEFUL_WARN, True), reason)


def _pct(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"


def _num(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:+.3f}"


def realistic_verdict(fidelity: dict[str, Any]) -> Verdict:
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
    worst_prdc = min(prdc["precision"], prdc["coverage"])
    levels.append(_graded(worst_prdc, PRDC_PASS, PRDC_WARN, True))
    reason = (
        f"{fid_text}; {100 * prdc['precision']:.0f}% of synthetic images lie within the real images' "
        f"neighbourhoods (precision) and they cover {100 * prdc['coverage']:.0f}% of the real images "
        f"(coverage, k={prdc['k']})"
    )
    return Verdict(check, max(levels, key=_SEVERITY.__getitem__), reason)


def reid_verdict(reid: dict[str, Any]) -> Verdict:
    """Linked share of synthetic images vs the held-out share at a threshold calibrated on held-out images.

    The held-out share is itself uncertain (the threshold is a quantile of few images, and images of one
    patient are correlated), so the synthetic interval must clear the held-out share's Wilson interval
    computed over held-out PATIENTS, not just the nominal rate.
    """
    check = "re-identification"
    if "skipped" in reid:
        return Verdict(check, "n/a", reid["skipped"])
    ver, match = reid["verification"], reid["matching"]
    cal = match["gallery_calibrated"][str(REID_FPR)]
    syn, held = cal["synthetic"], cal["heldout_fraction"]
    n_patients = int(ver["n_patients"])
    _, held_high = wilson_ci(round(held * n_patients), n_patients, 0.95)
    reason = (
        f"{100 * syn['fraction']:.1f}% of synthetic images (95% CI {100 * syn['ci_low']:.1f}-"
        f"{100 * syn['ci_high']:.1f}%) are linked to a training patient at the threshold that links "
        f"{100 * held:.1f}% of unseen patients' images (up to {100 * held_high:.0f}% given {n_patients} held-out "
        f"patients); attacker verification AUROC {ver['auroc']:.3f} on held-out patients"
    )
    f, above = syn["fraction"], syn["ci_low"] > held_high
    if above and f > REID_FAIL_RATIO * held:
        return Verdict(check, "fail", f"{reason}: synthetic images point to specific training patients")
    if above and f > REID_WARN_RATIO * held:
        return Verdict(check, "warn", f"{reason}: more links than expected; inspect the linked images")
    if _lower(ver, "auroc", "ci_low") < REID_WEAK_AUROC:
        return Verdict(check, "warn", f"{reason}: the attacker cannot re-identify even real patients well, "
                                      "so finding no links is weak evidence")  # fmt: skip
    return Verdict(check, "pass", f"{reason}: no more links than for unseen patients")


def overall(question: str, checks: list[Verdict]) -> Verdict:
    """The worst check decides; a check that could not run caps the verdict at WARN. With one check the
    reason is its own; with several it names the checks that decided (their reasons are in the report)."""
    assessed = [c for c in checks if c.level != "n/a"]
    if not assessed:
        return Verdict(question, "n/a", "; ".join(c.reason for c in checks) or "not assessed")
    if len(checks) == 1:
        return Verdict(question, checks[0].level, checks[0].reason)
    level = max((c.level for c in checks), key=_SEVERITY.__getitem__)
    if level == "pass":
        return Verdict(question, "pass", f"all {len(checks)} checks pass: " + ", ".join(c.check for c in checks))
    deciding = [c for c in checks if _SEVERITY[c.level] == _SEVERITY[level]]
    names = ", ".join(c.check + (" (not assessed)" if c.level == "n/a" else "") for c in deciding)
    verb = "fail" if level == "fail" else "need attention"
    return Verdict(
        question, "warn" if level == "n/a" else level, f"{len(deciding)} of {len(checks)} checks {verb}: {names}"
    )
