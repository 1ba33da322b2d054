"""Statistics of a reader study: can readers tell real from synthetic images?

"Positive" means synthetic throughout: sensitivity is the share of synthetic images called synthetic,
specificity the share of real images called real. Proportions carry exact (Clopper-Pearson) 95% CIs
(scipy's `binomtest(...).proportion_ci(method="exact")`), and accuracy a two-sided binomial test against
0.5, the accuracy of a reader who guesses (whatever the real/synthetic mix: a guess is right half the time).

The ROC curve scores each answer on one axis from "certainly real" to "certainly synthetic"
(synthetic at confidence c -> +c, real at confidence c -> -c), the usual way rating-scale reader studies
are turned into ROC curves; AUROC 0.5 means readers cannot tell the two apart even with their confidence.

Inter-reader agreement is Fleiss' kappa (statsmodels) over the images that every reader answered (the
statistic needs the same number of ratings per image); with fewer than two readers or no shared images
it is not computed, and the section says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.stats.inter_rater import fleiss_kappa

from medsyn.readerstudy.store import Study

CHANCE = 0.5


def proportion(k: int, n: int) -> dict[str, Any]:
    """k of n with its exact 95% CI; value and CI are None when n is 0."""
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci_low": None, "ci_high": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": int(k), "n": int(n), "value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high)}


def scores(frame: pd.DataFrame) -> np.ndarray:
    """Rating-scale score: +confidence for a 'synthetic' answer, -confidence for 'real'."""
    sign = np.where(frame["answer"].to_numpy() == "synthetic", 1, -1)
    return sign * frame["confidence"].to_numpy()


def roc(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(fpr, tpr, auroc) with synthetic as positive; None when only one truth was answered."""
    truth = (frame["truth"] == "synthetic").to_numpy()
    if truth.all() or not truth.any():
        return None
    s = scores(frame)
    fpr, tpr, _ = roc_curve(truth, s)
    return fpr, tpr, float(roc_auc_score(truth, s))


def rates(frame: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity (with CIs), p-value vs chance and AUROC of a set of answers."""
    correct = frame["answer"] == frame["truth"]
    syn = frame["truth"] == "synthetic"
    k, n = int(correct.sum()), len(frame)
    curve = roc(frame)
    return {
        "answers": n,
        "accuracy": proportion(k, n),
        "sensitivity": proportion(int((correct & syn).sum()), int(syn.sum())),
        "specificity": proportion(int((correct & ~syn).sum()), int((~syn).sum())),
        "p_value_vs_chance": float(binomtest(k, n, CHANCE).pvalue) if n else None,
        "auroc": None if curve is None else curve[2],
    }


def kappa(frame: pd.DataFrame) -> dict[str, Any]:
    """Fleiss' kappa over the images that every reader answered (see the module docstring)."""
    readers = sorted(frame["reader"].unique())
    if len(readers) < 2:
        return {"value": None, "readers": len(readers), "images": 0, "note": "needs at least two readers"}
    per_image = frame.groupby("image")["reader"].nunique()
    shared = per_image.index[per_image == len(readers)]
    if len(shared) == 0:
        return {"value": None, "readers": len(readers), "images": 0, "note": "no image was answered by every reader"}
    sub = frame[frame["image"].isin(shared)]
    table = pd.crosstab(sub["image"], sub["answer"]).reindex(columns=["real", "synthetic"], fill_value=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # one category throughout: 0/0, reported below
        value = float(fleiss_kappa(table.to_numpy(), method="fleiss"))
    note = "images answered by every reader"
    if not math.isfinite(value):  # every reader gave the same answer to every image: agreement is undefined
        value, note = None, "undefined: all answers on the shared images are the same category"
    return {"value": value, "readers": len(readers), "images": int(len(shared)), "note": note}


def _by(frame: pd.DataFrame, column: str, keys: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for key in keys:
        sub = frame[frame[column] == key]
        out[str(key)] = {**proportion(int((sub["answer"] == sub["truth"]).sum()), len(sub)),
                         "real": int((sub["truth"] == "real").sum()), "synthetic": int((sub["truth"] == "synthetic").sum())}  # fmt: skip
    return out


def answer_frame(study: Study) -> pd.DataFrame:
    cols = ["reader", "image", "truth", "group", "answer", "confidence", "finding", "answered_at"]
    return pd.DataFrame(study.answer_table(), columns=cols)


def reader_study_section(study_path: str | Path) -> dict[str, Any]:
    """The `reader_study` section of metrics.json (JSON-ready). Keys:

    study: file, images, real, synthetic (counts), groups, seed, n, by_class, real_source (spec and which real
        images: held-out patients), synthetic_source (location, kind, images in the set), readers, answers,
        complete_readers
    pooled: answers, accuracy / sensitivity / specificity ({k, n, value, ci_low, ci_high}),
        p_value_vs_chance, auroc
    readers: [{reader, answered, of, complete, ...the pooled keys}]
    fleiss_kappa: {value, readers, images, note}
    by_group: {group: {k, n, value, ci_low, ci_high, real, synthetic}} (accuracy per class group)
    by_confidence: {"1".."5": same} (accuracy per stated confidence)
    findings: {answered, matching} (how often an optional finding was given, and matched the image's group)
    verdict: one sentence on whether readers told real from synthetic
    """
    study = Study(study_path)
    frame = answer_frame(study)
    images = pd.DataFrame(study.image_table(), columns=["image", "truth", "group"])
    meta = study.meta
    total = len(images)
    readers = []
    for name, sub in frame.groupby("reader", sort=False):
        readers.append({"reader": str(name), "answered": len(sub), "of": total, "complete": len(sub) == total,
                        **rates(sub)})  # fmt: skip
    pooled = rates(frame)
    given = frame[frame["finding"].notna()]
    return {
        "study": {
            "file": str(Path(study_path)), "images": total, "real": int((images["truth"] == "real").sum()),
            "synthetic": int((images["truth"] == "synthetic").sum()), "groups": meta.get("groups", []),
            "seed": meta.get("seed"), "n": meta.get("n"), "by_class": meta.get("by_class"),
            "real_source": meta.get("real", {}), "synthetic_source": meta.get("synthetic", {}),
            "readers": len(readers), "answers": len(frame), "complete_readers": sum(r["complete"] for r in readers),
        },
        "pooled": pooled,
        "readers": readers,
        "fleiss_kappa": kappa(frame),
        "by_group": _by(frame, "group", sorted(images["group"].unique())),
        "by_confidence": _by(frame, "confidence", range(1, 6)),
        "findings": {"answered": len(given), "matching": int((given["finding"] == given["group"]).sum())},
        "verdict": verdict(pooled),
    }  # fmt: skip


def verdict(pooled: dict[str, Any]) -> str:
    """Whether the pooled accuracy differs from chance at the 5% level, in words."""
    acc, p = pooled["accuracy"], pooled["p_value_vs_chance"]
    if not acc["n"]:
        return "no answers yet"
    text = f"pooled accuracy {acc['value']:.1%} (95% CI {acc['ci_low']:.1%}-{acc['ci_high']:.1%}, {acc['n']} answers)"
    if p < 0.05 and acc["value"] > CHANCE:
        return f"readers told real from synthetic better than chance: {text}, p = {p:.2g}"
    if p < 0.05:
        return f"readers were worse than chance (they took synthetic for real more often than not): {text}, p = {p:.2g}"
    return f"readers did not tell real from synthetic better than chance: {text}, p = {p:.2g}"
