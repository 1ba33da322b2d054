"""Useful?: TSTR against TRTR, capped for a collapsed set; the segmentation utility of image + mask pairs; and the
feature-importance (Grad-CAM) check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsyn.evaluate.verdicts.base import Verdict, _dec, _fmt, _graded, _lower, _num, _pct, overall
from medsyn.evaluate.verdicts.thresholds import (
    SALIENCY_GAP,
    SALIENCY_MIN_PAIRED,
    SALIENCY_P,
    SEGMENTATION_MIN_REAL_DICE,
    SEGMENTATION_PASS,
    SEGMENTATION_WARN,
    USEFUL_PASS,
    USEFUL_WARN,
)


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


def saliency_verdict(section: Mapping[str, Any], reference: Verdict | None = None) -> Verdict:
    """Feature importance: does the synthetic-trained model look where real-trained models look? `reference`,
    the TSTR-vs-TRTR verdict: when it is not assessable (a real-trained classifier near chance), neither is
    this: the maps of a model that cannot classify are no reference (on the NIH sample such maps "agreed")."""
    check = "feature importance (Grad-CAM)"
    if "skipped" in section:
        return Verdict(check, "n/a", section["skipped"])
    if reference is not None and reference.level == "n/a":
        return Verdict(check, "n/a", f"no reference to agree with: {reference.reason}")
    groups = {g: (e, saliency_below_baseline(e)) for g, e in section["per_group"].items()}
    judged = {g: v for g, v in groups.items() if v[1] is not None}
    if not judged:
        ref, n = section["undefined"].get("reference"), section["images"]
        own = (f"; the real-trained model's own map is constant for {ref} of {n} images: it finds no positive "
               "evidence to compare against (a weak real-trained classifier, or classes predicted from the absence "
               "of features)") if ref else ""  # fmt: skip
        return Verdict(check, "n/a", f"fewer than {SALIENCY_MIN_PAIRED} images with all three maps defined in every "
                                     f"class group (constant maps: no positive evidence for the class explained){own}")  # fmt: skip

    def text(g: str, e: Mapping[str, Any]) -> str:
        pr = e["paired"]
        return (f"{g}: Spearman {_fmt(e['synthetic']['spearman_mean'])} vs {_fmt(e['baseline']['spearman_mean'])} "
                f"for the real-trained seed baseline (paired gap {pr['spearman_gap']:.2f}, p = {pr['spearman_pvalue']:.2g}, "
                f"{pr['n']} images)")  # fmt: skip

    below = [text(g, e) for g, (e, b) in judged.items() if b]
    if below:
        seeds = section.get("model_seeds") or {}
        single = min(seeds.get("synthetic", 1), seeds.get("baseline", 1)) == 1
        caveat = ("; one training seed per side, and Grad-CAM maps of small networks vary between seeds, so confirm "
                  "with another --seed or the full evaluation (3 seeds) before acting on it") if single else ""  # fmt: skip
        return Verdict(check, "warn", "the synthetic-trained model's Grad-CAM maps agree with the real-trained "
                                      "model's clearly less than two real-trained seeds agree with each other ("
                                      + "; ".join(below) + f"): it may rely on other cues (shortcuts){caveat}")  # fmt: skip
    return Verdict(check, "pass", "agreement with the real-trained model's maps is not clearly below the "
                                  "real-vs-real seed baseline (" + "; ".join(text(g, e) for g, (e, _) in judged.items())
                                  + ")")  # fmt: skip


def segmentation_verdict(section: Mapping[str, Any]) -> Verdict:
    """Do synthetic (image, mask) pairs train a U-Net that segments real patients as well as real pairs do?"""
    check = "segmentation utility (Dice, synthetic vs real pairs)"
    if "skipped" in section:
        return Verdict(check, "n/a", section["skipped"])
    trtr, tstr = section["trtr"]["mean_dice"], section["tstr"]["mean_dice"]
    silver = " (silver-standard masks: Dice is agreement with the model that made them)" if section.get(
        "silver_standard") else ""  # fmt: skip
    if not _lower(trtr, "value", "ci_low") >= SEGMENTATION_MIN_REAL_DICE:
        return Verdict(check, "n/a", f"the U-Net trained on real pairs reaches only mean Dice {trtr['value']:.3f} on "
                                     "held-out patients, so there is no real performance to compare against; train "
                                     "it longer (settings segmentation: {epochs: ...}) or use more masked images")  # fmt: skip
    ratio, gain = section["ratio"]["dice"], section["augmentation_gain"]["dice"]
    reason = (f"trained on synthetic pairs, the U-Net reaches mean Dice {tstr['value']:.3f} vs {trtr['value']:.3f} "
              f"trained on real pairs: ratio {ratio['value']:.3f} (95% CI {_dec(ratio.get('ci_low'))}-"
              f"{_dec(ratio.get('ci_high'))}); adding the synthetic pairs to the real ones changes Dice by "
              f"{gain['value']:+.3f} (CI {_num(gain.get('ci_low'))} to {_num(gain.get('ci_high'))}){silver}")  # fmt: skip
    return Verdict(check, _graded(float(ratio["value"]), SEGMENTATION_PASS, SEGMENTATION_WARN, True), reason)


def useful_overall(useful: Verdict | None, saliency: Verdict | None, segmentation: Verdict | None = None) -> Verdict:
    """Useful? from the TSTR check and, for image + mask sets, the segmentation check (the worse decides; a set
    without labels has only the latter); a feature-importance WARN turns a PASS into WARN, is named beside a
    WARN or FAIL, and never raises a verdict (nor changes a NOT ASSESSED one)."""
    checks = [c for c in (useful, segmentation) if c is not None]
    base = overall("Useful?", checks) if checks else Verdict("Useful?", "n/a", "no utility check applies")
    if saliency is not None and saliency.level == "warn" and base.level in ("pass", "warn", "fail"):
        level = "warn" if base.level == "pass" else base.level
        return Verdict("Useful?", level, f"{base.reason}; also, {saliency.reason}")
    return base
