"""The report's feature-importance section: where do the real- and synthetic-trained classifiers look?

Numbers from metrics.json "saliency" (`medsyn.evaluate.saliency.baseline_comparison`), the grid figure, and
a reading in plain words per class group; whether a group is "clearly below" the real-vs-real baseline is
decided by `medsyn.evaluate.verdicts.saliency_below_baseline`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsyn.evaluate.verdicts import SALIENCY_MIN_PAIRED, saliency_below_baseline
from medsyn.report.markup import _badge, _e, _img, _num, _table

SIMILAR_GAP = 0.05  # a paired Spearman gap this small is read as "about as much" (wording only, not a verdict)


def _pair(stats: Mapping[str, Any]) -> str:
    return (f"{_num(stats['spearman_mean'], 2)} / {_num(stats['spearman_median'], 2)} · "
            f"{_num(stats['iou_mean'], 2)} / {_num(stats['iou_median'], 2)}")  # fmt: skip


def reading(group: str, e: Mapping[str, Any]) -> str:
    """One class group's agreement in plain words."""
    syn, base, paired, n = e["synthetic"], e["baseline"], e["paired"], e["n"]
    below = saliency_below_baseline(e)
    if below is None:
        text = (f"{group} ({n} images): only {paired['n']} images where every map is defined, fewer than the "
                f"{SALIENCY_MIN_PAIRED} needed to compare the synthetic-trained model with the real-vs-real "
                "baseline.")  # fmt: skip
    else:
        gap = paired["spearman_gap"]
        if below:
            how = "clearly less than two real-trained models agree with each other: it may look elsewhere (shortcuts)"
        elif gap <= SIMILAR_GAP:
            how = "about as much as two real-trained models agree with each other, or more"
        else:
            how = "somewhat less than two real-trained models agree, but not clearly so"
        text = (f"{group} ({n} images): the synthetic-trained model's maps agree with the real-trained model's at "
                f"Spearman {_num(syn['spearman_mean'], 2)} (top-region IoU {_num(syn['iou_mean'], 2)}), against "
                f"{_num(base['spearman_mean'], 2)} ({_num(base['iou_mean'], 2)}) for the real-trained seed baseline: "
                f"{how} (paired gap {gap:.2f}, p = {paired['spearman_pvalue']:.2g}, {paired['n']} images).")  # fmt: skip
    syn_flat, base_flat, ref_flat = n - syn["defined"], n - base["defined"], e.get("reference_undefined", 0)
    if ref_flat >= 0.5 * n:
        text += (f" The real-trained model's own map is constant for {ref_flat} of {n} images: it finds no positive "
                 "evidence for the class explained, so there is little to agree with.")  # fmt: skip
    elif syn_flat > base_flat and syn_flat >= 0.25 * n:
        text += (f" The synthetic-trained model's map is constant for {syn_flat} of {n} images (the second real "
                 f"seed's for {base_flat}): it finds no positive evidence for the class explained, and may predict "
                 "it from the absence of other findings.")  # fmt: skip
    return text


def saliency_section(m: Mapping[str, Any], fig: str | None, real_images: bool) -> str:
    """The section's HTML (empty when metrics.json has no saliency entry, e.g. an older file)."""
    sal = m.get("saliency")
    if not sal:
        return ""
    out = "<h3>Feature importance: do the models look at the same regions?</h3>"
    if "skipped" in sal:
        return out + f"<p>Not assessed: {_e(sal['skipped'])}</p>"
    v = sal.get("verdict") or {}
    if v:
        out += f"<p>{_badge(v['level'])} {_e(v['reason'])}</p>"
    models = sal["models"]
    out += (f"<p>Grad-CAM maps (at {_e(sal['layer'])}) of the real-trained ({_e(models['reference'])}) and the "
            f"synthetic-trained ({_e(models['synthetic'])}) classifiers on the same {_num(sal['images'])} real test "
            f"images, for the same class ({_e(sal['explained_class'])}). Agreement per image: Spearman rank "
            f"correlation of the two maps, and IoU of their top {100 * sal['top_fraction']:g}% pixels (two "
            f"unrelated maps: IoU {_num(sal['iou_chance'], 3)} on average). Maps of small networks vary between "
            f"seeds, so the baseline is a second real-trained classifier ({_e(models['baseline'])}), against the "
            "same real-trained maps: a synthetic-trained model that agrees about as much looks where real-trained "
            "models look. A constant map (no positive evidence) is undefined and left out.</p>")  # fmt: skip
    out += "<ul>" + "".join(f"<li>{_e(reading(g, e))}</li>" for g, e in sal["per_group"].items()) + "</ul>"
    rows = []
    for g, e in [*sal["per_group"].items(), ("all images", sal["overall"])]:
        pr = e["paired"]
        gap = "–" if pr["spearman_gap"] is None else f"{pr['spearman_gap']:+.2f} (p = {pr['spearman_pvalue']:.2g})"
        rows.append([_e(g), _num(e["n"]), _pair(e["synthetic"]), _num(e["synthetic"]["defined"]),
                     _pair(e["baseline"]), _num(e["baseline"]["defined"]), f"{gap}, {pr['n']} images"])  # fmt: skip
    out += _table(["class group", "images", "synthetic-trained vs real-trained: Spearman mean / median · IoU mean / "
                   "median", "defined", "2nd real seed vs real-trained (baseline)", "defined",
                   "paired Spearman gap (baseline − synthetic)"], rows, (1, 3, 5))  # fmt: skip
    if not real_images:
        return out + "<p class=muted>Grid left out: the report was made without real images.</p>"
    return out + _img(fig, "saliency grid",
                      "Rows: real test images (class group, and the class explained). Columns: the image, then the "
                      "Grad-CAM map of the real-trained, the synthetic-trained and a second real-trained classifier "
                      "over it (red = most important). Under each map: its agreement with the real-trained map.")
