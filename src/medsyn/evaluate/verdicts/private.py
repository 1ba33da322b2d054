"""Private?: DCR, nearest-patient concentration (with hubs), membership inference, re-identification, and
checks a privacy filter screened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from medsyn.evaluate.stats import wilson_ci
from medsyn.evaluate.verdicts.base import Verdict, _lower
from medsyn.evaluate.verdicts.thresholds import (
    CONCENTRATION_FAIL_P,
    CONCENTRATION_FAIL_RATIO,
    CONCENTRATION_MIN_SHARE,
    CONCENTRATION_NO_RESEMBLANCE,
    CONCENTRATION_WARN_P,
    CONCENTRATION_WARN_RATIO,
    DCR_FAIL_P,
    DCR_FAIL_RATIO,
    DCR_WARN_P,
    DCR_WARN_RATIO,
    MIA_FAIL_AUROC,
    REID_FAIL_RATIO,
    REID_FPR,
    REID_WARN_RATIO,
    REID_WEAK_AUROC,
)


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


def mia_check(attack: str, space: str) -> str:
    """The check's name: the distance attack keeps its historical name, the others say which attack."""
    return f"membership inference ({space})" if attack == "distance" else f"membership inference, {attack} ({space})"


def mia_verdict(res: Any) -> Verdict:
    """Membership leakage? `res`: an MIAResult. The discriminator attack is capped at WARN: the discriminator
    is not shared, so its leak shows that training memorised members, not that the shared generator does."""
    check = mia_check(res.attack, res.space)
    stats = (
        f"AUROC {res.auroc:.3f} ({100 * res.ci_level:g}% CI {res.ci_low:.3f}-{res.ci_high:.3f}, "
        f"{res.n_members} members vs {res.n_non_members} non-members)"
    )
    verdict = _mia_level(res, check, stats)
    shift = getattr(res, "split_shift", None)
    if shift and verdict.level != "pass" and (shift["ci_low"] > 0.5 or shift["ci_high"] < 0.5):
        verdict = Verdict(check, verdict.level, f"{verdict.reason}; but the held-out splits already differ by this "
                          f"score (validation vs test non-members: AUROC {shift['auroc']:.3f}, CI "
                          f"{shift['ci_low']:.3f}-{shift['ci_high']:.3f}), so part of this signal is a shift between "
                          "the splits, not membership")  # fmt: skip
    return verdict


def _mia_level(res: Any, check: str, stats: str) -> Verdict:
    """mia_verdict's level and reason from the AUROC and its CI alone."""
    if res.ci_low > 0.5 and res.auroc >= MIA_FAIL_AUROC:
        if res.attack == "discriminator":
            return Verdict(check, "warn", f"{stats}: the discriminator tells training images from unseen ones, so "
                                          "training memorised members; the discriminator is not shared, but the "
                                          "generator learned from it: weigh the attacks on the synthetic set, or "
                                          "train with --dp-epsilon")  # fmt: skip
        return Verdict(check, "fail", f"{stats}: training images can be told apart from unseen ones")
    if res.ci_low > 0.5:
        return Verdict(check, "warn", f"{stats}: small but detectable membership leakage")
    if res.ci_high < 0.5:
        return Verdict(
            check,
            "warn",
            f"{stats}: held-out images score as more member-like than training images, so the two real sets "
            "differ in distribution and this test cannot detect leakage",
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
