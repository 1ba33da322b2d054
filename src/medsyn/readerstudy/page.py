"""`medsyn reader-study analyze`: reader_study.json, answers.csv and a self-contained report.html (figures
inline as base64 PNG, the evaluation report's CSS, no scripts) in an output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import matplotlib.pyplot as plt
import numpy as np

from medsyn.io import atomic_dir, write_json_atomic, write_text_atomic
from medsyn.readerstudy.analyze import CHANCE, answer_frame, reader_study_section, roc
from medsyn.readerstudy.store import Study
from medsyn.report.figures import REAL, SYNTH, encode
from medsyn.report.html import CSS

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _pct(entry: dict[str, Any] | None) -> str:
    """'63.0% (52.1-72.9%)' from a proportion entry; '–' when there is none."""
    if not entry or entry.get("value") is None:
        return "–"
    return f"{entry['value']:.1%} ({entry['ci_low']:.1%}–{entry['ci_high']:.1%})"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


_ENV.filters.update(pct=_pct, num=_num)


def accuracy_figure(section: dict[str, Any]) -> str | None:
    """Accuracy with its 95% CI per reader and pooled, against the chance line."""
    rows = [(r["reader"], r["accuracy"]) for r in section["readers"]] + [("pooled", section["pooled"]["accuracy"])]
    rows = [(name, a) for name, a in rows if a["n"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, (name, a) in zip(y, rows, strict=True):
        color = SYNTH if name == "pooled" else REAL
        ax.errorbar(a["value"], yi, xerr=[[a["value"] - a["ci_low"]], [a["ci_high"] - a["value"]]], fmt="o",
                    color=color, capsize=3)  # fmt: skip
    ax.axvline(CHANCE, color="grey", ls="--", lw=1, label="chance")
    ax.set_yticks(y, [name for name, _ in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% Clopper-Pearson CI)")
    ax.legend(loc="lower right", fontsize=8)
    return encode(fig)


def roc_figure(frame: Any) -> str | None:
    """ROC curve of each reader and of the pooled answers, from the confidence ratings."""
    curves = [(str(name), roc(sub)) for name, sub in frame.groupby("reader", sort=False)] + [("pooled", roc(frame))]
    curves = [(name, c) for name, c in curves if c is not None]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (fpr, tpr, auc) in curves:
        style = {"color": SYNTH, "lw": 2.2} if name == "pooled" else {"lw": 1.1, "alpha": 0.8}
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.2f})", **style)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set_xlabel("real images called synthetic (FPR)")
    ax.set_ylabel("synthetic images called synthetic (TPR)")
    ax.legend(fontsize=7, loc="lower right")
    return encode(fig)


def confidence_figure(section: dict[str, Any]) -> str | None:
    """Accuracy by stated confidence (bars: answers; points: accuracy with CI)."""
    entries = [(int(c), e) for c, e in section["by_confidence"].items() if e["n"]]
    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    xs = [c for c, _ in entries]
    vals = [e["value"] for _, e in entries]
    err = [[e["value"] - e["ci_low"] for _, e in entries], [e["ci_high"] - e["value"] for _, e in entries]]
    ax.errorbar(xs, vals, yerr=err, fmt="o-", color=REAL, capsize=3)
    ax.axhline(CHANCE, color="grey", ls="--", lw=1)
    for c, e in entries:
        ax.annotate(f"n={e['n']}", (c, 0.02), ha="center", fontsize=7, color="grey")
    ax.set_xticks(range(1, 6))
    ax.set_ylim(0, 1)
    ax.set_xlabel("stated confidence (1 guessing, 5 certain)")
    ax.set_ylabel("accuracy")
    return encode(fig)


def render(section: dict[str, Any], figures: dict[str, str | None]) -> str:
    return _ENV.get_template("analysis.html").render(s=section, figs=figures, css=CSS)


def analyze(study_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write reader_study.json, answers.csv and report.html into `out` (atomically, as one folder)."""
    section = reader_study_section(study_path)
    frame = answer_frame(Study(study_path))
    figures = {"accuracy": accuracy_figure(section), "roc": roc_figure(frame), "confidence": confidence_figure(section)}
    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / "reader_study.json", section)
        frame.to_csv(tmp / "answers.csv", index=False)
        write_text_atomic(tmp / "report.html", render(section, figures))
    return section
