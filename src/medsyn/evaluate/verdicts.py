"""Every verdict rule and threshold of `medsyn evaluate`: Useful? Realistic? Private?

Each check is pass / warn / fail, or n/a when it could not be assessed, with a one-line reason that quotes
the numbers. `THRESHOLDS` below is the table of every rule, printed in the report ("How the verdicts are
decided") and appended to this docstring; the thresholds are heuristics chosen to be stated and argued
about, not universal standards, and the metric tables next to each verdict let a reviewer apply their own.

How the checks combine (`overall`): the worst check decides; a check that could not run caps the verdict at
WARN; a check in a space the generator's privacy filter already screened is shown but does not decide
(it passes by construction), so an independent space must. Realistic? is FAIL for a collapsed set whatever
the features say, and NOT ASSESSED (not PASS) when the feature backbone is uninformative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from medsyn.evaluate.stats import wilson_ci
from medsyn.io import Result

USEFUL_PASS, USEFUL_WARN = 0.8, 0.5
SALIENCY_MIN_PAIRED, SALIENCY_GAP, SALIENCY_P = 10, 0.15, 0.01
FID_PASS, FID_WARN = 2.0, 5.0
PRDC_PASS, PRDC_WARN = 0.5, 0.25
BACKBONE_MIN_AUROC = 0.6
DIVERSITY_WARN, DIVERSITY_FAIL = 0.8, 0.5
DCR_WARN_RATIO, DCR_FAIL_RATIO = 1.5, 3.0
DCR_WARN_P, DCR_FAIL_P = 0.05, 0.01
MIA_FAIL_AUROC = 0.60
CONCENTRATION_MIN_SHARE = 0.10
CONCENTRATION_WARN_RATIO, CONCENTRATION_FAIL_RATIO = 1.5, 3.0
CONCENTRATION_WARN_P, CONCENTRATION_FAIL_P = 0.05, 0.01
CONCENTRATION_NO_RESEMBLANCE = 0.05
REID_FPR = 0.05
REID_WARN_RATIO, REID_FAIL_RATIO = 1.5, 3.0
REID_WEAK_AUROC = 0.6

THRESHOLDS: dict[str, list[str]] = {
    "Useful?": [
        "r = (TSTR - 0.5) / (TRTR - 0.5): the share of the real-trained classifier's above-chance mean AUROC "
        "that a classifier trained only on synthetic images keeps, both tested on held-out real patients",
        f"PASS r >= {USEFUL_PASS}, WARN {USEFUL_WARN} <= r < {USEFUL_PASS}, FAIL r < {USEFUL_WARN}",
        "n/a when the real-trained classifier is not clearly above chance (CI lower bound <= 0.5)",
        "at most WARN when the synthetic set is collapsed (see Realistic?): a few repeated images can still "
        "train a classifier for an easy task, which says little about the set",
        "feature importance (Grad-CAM, a supplementary check that can lower the verdict, never raise it): per "
        "class group, the agreement (Spearman over pixels) of the synthetic-trained model's maps with the "
        "real-trained model's, against a second real-trained seed's agreement with the same maps on the same "
        f"images; below the seed baseline when the mean paired gap >= {SALIENCY_GAP} with a one-sided Wilcoxon "
        f"p < {SALIENCY_P} over >= {SALIENCY_MIN_PAIRED} images with all maps defined; a group below turns a "
        "PASS of Useful? into WARN (the synthetic-trained model may rely on other cues: shortcuts); not "
        "assessed (too few defined maps, stage off) leaves Useful? as it is",
    ],
    "Realistic?": [
        "diversity (pixel space, n = min(synthetic, real training, 2000) random images each): modes = connected "
        "groups of images closer than the real images' 5th-percentile nearest-other distance; m = synthetic "
        f"modes / real modes: FAIL (collapsed) m < {DIVERSITY_FAIL}, WARN m < {DIVERSITY_WARN}; a FAIL here "
        "fails Realistic? whatever the features say",
        "q = FID(real, synthetic) / FID(real, real) at the same N (two disjoint real subsets, whole patients on "
        f"each side when patient ids are known): PASS q <= {FID_PASS:g}, WARN q <= {FID_WARN:g}, FAIL q > {FID_WARN:g}",
        f"precision and coverage (k = 5): PASS both >= {PRDC_PASS}, WARN both >= {PRDC_WARN}, else FAIL; both 0: "
        "the synthetic images do not resemble the real ones at all",
        "not assessable (n/a) when the feature backbone is uninformative: a classifier trained here on the real "
        f"images whose held-out mean AUROC is below {BACKBONE_MIN_AUROC} or whose CI reaches 0.5, or fewer images "
        "than feature dimensions (N <= D, N the images per side of the same-N FID comparison); then train longer / "
        "on more data, or pass --features with local weights",
        "the fidelity check is the worst of FID and PRDC; FID values are comparable only at the same backbone and N",
    ],
    "Private?": [
        "DCR (pixel and feature space): f = share of synthetic images closer to a training image than the "
        "held-out 1st percentile (expected about 1% without copying; more with few held-out images); p from the "
        "precedence test, which allows for the uncertainty of that percentile (Nelson 1963); FAIL if any "
        f"synthetic image equals a training image or f > {DCR_FAIL_RATIO:g}x expected with p < {DCR_FAIL_P}; "
        f"WARN if f > {DCR_WARN_RATIO:g}x expected with p < {DCR_WARN_P}",
        "nearest-patient concentration (per DCR space, patients with several images): s = share of synthetic images "
        "whose nearest training image belongs to one patient, h = the held-out share for that patient; p from a "
        "permutation test of s - h; the close variant (s_c, h_c, p_c) counts only images no farther from that "
        "patient than the median held-out DCR, since images unlike any real one (a collapsed or failed set) all "
        f"fall nearest to the same hub training images; FAIL if s_c >= {CONCENTRATION_MIN_SHARE} and s_c > "
        f"{CONCENTRATION_FAIL_RATIO:g}h_c with p_c < {CONCENTRATION_FAIL_P}; WARN if s_c >= {CONCENTRATION_MIN_SHARE} "
        f"and s_c > {CONCENTRATION_WARN_RATIO:g}h_c with p_c < {CONCENTRATION_WARN_P}, or if only the plain share "
        f"s meets that rule (s >= {CONCENTRATION_MIN_SHARE}, s > {CONCENTRATION_WARN_RATIO:g}h, p < "
        f"{CONCENTRATION_WARN_P}): far matches, reported as a possible hub effect, naming a collapse (diversity "
        f"FAIL) or a lack of resemblance (precision or coverage < {CONCENTRATION_NO_RESEMBLANCE}) when found",
        f"membership inference: FAIL if AUROC >= {MIA_FAIL_AUROC} with its 95% CI above 0.5; WARN if the CI "
        "excludes 0.5 on either side",
        f"re-identification: at the threshold that links {100 * REID_FPR:g}% of held-out patients' images to a "
        f"training patient, FAIL if the synthetic share is > {REID_FAIL_RATIO:g}x the held-out share and its 95% "
        "CI lies above the held-out share's 95% Wilson interval (over held-out patients), WARN likewise at "
        f"> {REID_WARN_RATIO:g}x; WARN when the attacker is weak (verification AUROC CI lower bound < "
        f"{REID_WEAK_AUROC})",
        "a set made with generate --privacy-filter: checks in the space the filter screened (pixels; re-"
        "identification when the filter used it) pass by construction, so they are shown as filtered and do not "
        "decide; the independent checks (feature space) do, and without one the verdict is at best WARN",
        "n/a checks (cap at WARN): the generator's training data or split differs from the evaluation's, or it is "
        "unknown which training images the generator saw",
        "the verdict is the worst deciding check",
    ],
}
__doc__ = (__doc__ or "") + "\nRules:\n\n" + "\n".join(
    f"{question}\n" + "\n".join(f"  - {line}" for line in lines) for question, lines in THRESHOLDS.items()
)

_SEVERITY = {"pass": 0, "n/a": 1, "warn": 1, "fail": 2}


@dataclass
class Verdict(Result):
    check: str
    level: str  # "pass" | "warn" | "fail" | "n/a"
    reason: str
    decides: bool = True  # False: shown, but a privacy filter screened this space (not independent evidence)


def _graded(value: float, pass_at: float, warn_at: float, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "n/a"
    if not higher_is_better:
        value, pass_at, warn_at = -value, -pass_at, -warn_at
    return "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"


def _lower(entry: Mapping[str, Any], point: str, low: str) -> float:
    """The CI lower bound, or the point estimate when no bootstrap was run."""
    value = entry.get(low)
    return float(entry[point]) if value is None or not math.isfinite(value) else float(value)


def _pct(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"


def _num(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:+.3f}"


# ----------------------------------------------------------------------------------------------- Useful?


def useful_verdict(utility: Mapping[str, Any], diversity: Verdict | None = None) -> Verdict:
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
    level = _graded(r, USEFUL_PASS, USEFUL_WARN, True)
    if diversity is not None and diversity.level == "fail" and level == "pass":
        return Verdict(check, "warn", f"{reason}; capped at WARN: the synthetic set is collapsed ({diversity.reason})")
    return Verdict(check, level, reason)


def saliency_below_baseline(entry: Mapping[str, Any]) -> bool | None:
    """Is one class group's synthetic-vs-real agreement clearly below the real-vs-real seed baseline? None
    when too few images have all three maps defined to tell (`entry`: a per-group entry of the section)."""
    paired = entry["paired"]
    if paired["n"] < SALIENCY_MIN_PAIRED or paired["spearman_gap"] is None:
        return None
    return paired["spearman_gap"] >= SALIENCY_GAP and paired["spearman_pvalue"] < SALIENCY_P


def saliency_verdict(section: Mapping[str, Any]) -> Verdict:
    """Feature importance: does the synthetic-trained model look where real-trained models look?"""
    check = "feature importance (Grad-CAM)"
    if "skipped" in section:
        return Verdict(check, "n/a", section["skipped"])
    groups = {g: (e, saliency_below_baseline(e)) for g, e in section["per_group"].items()}
    judged = {g: v for g, v in groups.items() if v[1] is not None}
    if not judged:
        return Verdict(check, "n/a", f"fewer than {SALIENCY_MIN_PAIRED} images with all three maps defined in every "
                                     "class group (constant maps: no positive evidence for the class explained)")  # fmt: skip

    def text(g: str, e: Mapping[str, Any]) -> str:
        pr = e["paired"]
        return (f"{g}: Spearman {_fmt(e['synthetic']['spearman_mean'])} vs {_fmt(e['baseline']['spearman_mean'])} "
                f"for a second real-trained seed (paired gap {pr['spearman_gap']:.2f}, p = {pr['spearman_pvalue']:.2g}, "
                f"{pr['n']} images)")  # fmt: skip

    below = [text(g, e) for g, (e, b) in judged.items() if b]
    if below:
        return Verdict(check, "warn", "the synthetic-trained model's Grad-CAM maps agree with the real-trained "
                                      "model's clearly less than two real-trained seeds agree with each other ("
                                      + "; ".join(below) + "): it may rely on other cues (shortcuts)")  # fmt: skip
    return Verdict(check, "pass", "agreement with the real-trained model's maps is not clearly below the "
                                  "real-vs-real seed baseline (" + "; ".join(text(g, e) for g, (e, _) in judged.items())
                                  + ")")  # fmt: skip


def useful_overall(useful: Verdict, saliency: Verdict | None) -> Verdict:
    """Useful? from the TSTR check; a feature-importance WARN turns a PASS into WARN and never raises it."""
    if saliency is not None and saliency.level == "warn" and useful.level == "pass":
        return Verdict("Useful?", "warn", f"{useful.reason}; but {saliency.reason}")
    return overall("Useful?", [useful])


def _fmt(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:.2f}"


# ------------------------------------------------------------------------------------------- Realistic?


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


# --------------------------------------------------------------------------------------------- Private?


def dcr_verdict(res: Any) -> Verdict:
    """Copies? `res`: a DCRResult."""
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


def concentration_context(diversity: Verdict | None, fidelity: Mapping[str, Any]) -> str | None:
    """What else the evaluation knows that makes a concentration look like hubness: a collapsed set, or one
    that barely resembles the real images (PRDC precision or coverage near 0). None when neither."""
    parts = []
    if diversity is not None and diversity.level == "fail":
        parts.append("the diversity check finds the set collapsed")
    prdc = fidelity.get("prdc") or {}
    if prdc and min(prdc["precision"], prdc["coverage"]) < CONCENTRATION_NO_RESEMBLANCE:
        parts.append(f"precision {prdc['precision']:.2f} and coverage {prdc['coverage']:.2f}: the set barely "
                     "resembles the real images")  # fmt: skip
    return "; ".join(parts) or None


def _concentrated(share: float, held: float, p: float, ratio: float, alpha: float) -> bool:
    return share >= CONCENTRATION_MIN_SHARE and share > ratio * held and p < alpha


def concentration_verdict(res: Any, context: str | None = None) -> Verdict | None:
    """One training patient nearest to many synthetic images? None when the DCR had no usable patient ids.

    A FAIL needs CLOSE matches (no farther than the median held-out DCR): concentration of far matches is
    what hub training images collect from a collapsed or failed set, so it is a WARN that says so. `context`
    (`concentration_context`) names the collapse or lack of resemblance the other checks found."""
    c = res.nearest_patient
    if c is None:
        return None
    check = f"nearest-patient concentration ({res.space})"
    s, h, p = c["synthetic"], c["holdout"], c["pvalue"]
    reason = (
        f"{100 * s:.1f}% of synthetic images have their nearest training image in one patient, against "
        f"{100 * h:.1f}% of held-out images (that patient has {100 * c['training']:.1f}% of the training images; "
        f"permutation test p = {p:.2g})"
    )
    also = f" ({context})" if context else ""
    plain_fail = _concentrated(s, h, p, CONCENTRATION_FAIL_RATIO, CONCENTRATION_FAIL_P)
    plain_warn = _concentrated(s, h, p, CONCENTRATION_WARN_RATIO, CONCENTRATION_WARN_P)
    if "close_pvalue" not in c:  # an older result without distances: the plain test decides
        if plain_fail or plain_warn:
            hub = f"; with a collapsed or unrealistic set this may be a hub effect{also}" if context else ""
            return Verdict(check, "fail" if plain_fail else "warn", f"{reason}: more than expected{hub}; inspect "
                                                                    "the closest pairs and re-identification")  # fmt: skip
        return Verdict(check, "pass", f"{reason}: no more than expected")
    cs, ch, cp = c["close_synthetic"], c["close_holdout"], c["close_pvalue"]
    close = (f"{100 * cs:.1f}% of synthetic images lie nearest to one patient and no farther from it than the "
             f"median held-out image lies from its nearest training image ({c['close_threshold']:.3g}), against "
             f"{100 * ch:.1f}% of held-out images (p = {cp:.2g})")  # fmt: skip
    if _concentrated(cs, ch, cp, CONCENTRATION_FAIL_RATIO, CONCENTRATION_FAIL_P):
        extra = f"; the set is also collapsed or unrealistic{also}" if context else ""
        return Verdict(check, "fail", f"{reason}; {close}: the generator reproduces one patient's images closely"
                                      f"{extra}; inspect the closest pairs and re-identification")  # fmt: skip
    if _concentrated(cs, ch, cp, CONCENTRATION_WARN_RATIO, CONCENTRATION_WARN_P):
        return Verdict(check, "warn", f"{reason}; {close}: more close matches than expected; inspect the closest "
                                      "pairs")  # fmt: skip
    if plain_fail or plain_warn:
        far = (f"the synthetic images nearest to that patient lie far from it (median {c['top_synthetic_median_distance']:.3g} "
               f"vs {c['holdout_median_distance']:.3g} for held-out images to their nearest training image)")  # fmt: skip
        return Verdict(check, "warn", f"{reason}, but {far}; {close}: concentration of far matches may be a hub "
                                      "effect (images unlike any real one all fall nearest to the same few training "
                                      f"images, as with a collapsed or failed generator) rather than a copied "
                                      f"patient{also}; inspect the closest pairs")  # fmt: skip
    return Verdict(check, "pass", f"{reason}; {close}: no more than expected")


def mia_verdict(res: Any) -> Verdict:
    """Membership leakage? `res`: an MIAResult."""
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


def reid_verdict(reid: Mapping[str, Any]) -> Verdict:
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


def filtered(check: Verdict, screen: Mapping[str, Any] | None, pixel: bool, reid: bool) -> Verdict:
    """`check` marked as not deciding when the generator's privacy filter (`screen`: the manifest's
    "privacy_filter" entry) screened its space: pixel checks always, re-identification when the filter used it."""
    if not screen or not ((pixel and screen.get("pixel")) or (reid and screen.get("reid"))):
        return check
    what = "pixel distances" if pixel else "the re-identification network"
    return replace(check, decides=False, reason=f"filtered, not independent evidence: generate --privacy-filter "
                                                f"re-drew candidates by {what}, so this check passes by "
                                                f"construction; {check.reason}")  # fmt: skip


def overall(question: str, checks: list[Verdict]) -> Verdict:
    """The worst deciding check decides; a check that could not run caps the verdict at WARN. With one check
    the reason is its own; with several it names the checks that decided (their reasons are in the report)."""
    shown = [c for c in checks if not c.decides]
    checks = [c for c in checks if c.decides]
    tail = f"; not deciding (filtered): {', '.join(c.check for c in shown)}" if shown else ""
    if shown and not checks:
        return Verdict(question, "warn", f"every check ran in a space the privacy filter screened, so none is "
                                         f"independent evidence{tail}")  # fmt: skip
    assessed = [c for c in checks if c.level != "n/a"]
    if not assessed:
        return Verdict(question, "n/a", "; ".join(c.reason for c in checks) or "not assessed")
    if len(checks) == 1:
        return Verdict(question, checks[0].level, checks[0].reason + tail)
    level = max((c.level for c in checks), key=_SEVERITY.__getitem__)
    if level == "pass":
        return Verdict(question, "pass", f"all {len(checks)} checks pass: " + ", ".join(c.check for c in checks) + tail)
    deciding = [c for c in checks if _SEVERITY[c.level] == _SEVERITY[level]]
    names = ", ".join(c.check + (" (not assessed)" if c.level == "n/a" else "") for c in deciding)
    verb = "fail" if level == "fail" else "need attention"
    return Verdict(
        question, "warn" if level == "n/a" else level, f"{len(deciding)} of {len(checks)} checks {verb}: {names}{tail}"
    )
