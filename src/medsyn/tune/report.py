"""A study's outputs: trials.csv, best.yaml (a `medsyn train --config` file), tune.json and tune.html.

The page is self-contained (inline CSS, figures as base64 PNG drawn with matplotlib, no plotly): the
optimisation history with the per-stage scores the pruner saw, parameter importance (Optuna's default
evaluator, from two complete trials on), parallel coordinates and the best trials' sample grids.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from medsyn import __version__
from medsyn.io import to_jsonable, write_json_atomic, write_text_atomic
from medsyn.report.figures import encode, plt
from medsyn.report.html import CSS
from medsyn.train import TrainConfig
from medsyn.tune.space import apply

ATTRS = ("val_tstr_auroc", "penalty", "privacy", "dcr_below_p1", "recall", "coverage", "precision", "density",
         "steps", "images_seen", "train_s", "stop_reason")  # fmt: skip
N_GRIDS = 3


def _complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else str(v)


def write_trials_csv(trials: list[FrozenTrial], path: Path) -> None:
    params = sorted({p for t in trials for p in t.params}, key=lambda p: (p.startswith("extra."), p))
    stages = sorted({s for t in trials for s in t.intermediate_values})
    head = ["number", "state", "base_config", "value", *ATTRS, *(f"score_at_{s}pct" for s in stages),
            "duration_s", *(f"param_{p}" for p in params), "error"]  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for t in trials:
        a = t.user_attrs
        dur = t.duration.total_seconds() if t.duration else None
        w.writerow([t.number, t.state.name.lower(), int(bool(a.get("baseline"))), _fmt(t.value),
                    *(_fmt(a.get(k)) for k in ATTRS), *(_fmt(t.intermediate_values.get(s)) for s in stages),
                    _fmt(dur), *(_fmt(t.params.get(p)) for p in params), a.get("error", "")])  # fmt: skip
    write_text_atomic(path, buf.getvalue())


def best_config(best: FrozenTrial, base: TrainConfig) -> TrainConfig:
    """The best trial as a training config on the user's data, for as many steps as the trial trained."""
    cfg = apply(base, best.params)
    steps = int(best.user_attrs.get("steps") or cfg.steps)
    return TrainConfig.from_dict({**cfg.to_dict(), "steps": steps, "time_limit_s": None})


def write_best_yaml(best: FrozenTrial, base: TrainConfig, baseline: float | None, budget: str, path: Path) -> None:
    cfg = best_config(best, base)
    vs = f" (base config: {baseline:.3f})" if baseline is not None else ""
    header = (
        f"# medsyn tune: trial {best.number}, validation TSTR AUROC {best.value:.3f}{vs}.\n"
        f"# Tuned with {budget} of generator training per trial; it trained {cfg.steps} steps, which 'steps' repeats\n"
        "# (raise it for a longer run). Train it with: medsyn train --config best.yaml --out RUN\n"
    )
    write_text_atomic(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------------------- figures
def history_figure(trials: list[FrozenTrial], baseline: float | None, trtr: float | None) -> str:
    """Left: each trial's final score and the running best; right: the per-stage scores the pruner saw."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    done = _complete(trials)
    x = np.array([t.number for t in done])
    y = np.array([t.value for t in done], float)
    left.plot(x, y, "o", color="#1f77b4", label="complete")
    if len(y):
        left.step(x, np.maximum.accumulate(y), where="post", color="#d62728", label="best so far")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        left.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                  "x", color="grey", label="pruned (last stage score)")  # fmt: skip
    for value, label, style in ((baseline, "base config", "--"), (trtr, "validation TRTR (real)", ":")):
        if value is not None:
            for ax in (left, right):
                ax.axhline(value, color="black", lw=0.9, ls=style, label=label if ax is left else None)
    left.set(xlabel="trial", ylabel="validation TSTR AUROC", title="optimisation history")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            color = {TrialState.PRUNED: "grey", TrialState.COMPLETE: "#1f77b4"}.get(t.state, "#ff7f0e")
            right.plot(steps, [t.intermediate_values[s] for s in steps], "-o", ms=3, color=color, alpha=0.7)
    right.set(xlabel="% of the trial's training budget", ylabel="validation TSTR AUROC",
              title="scores per stage (grey: pruned)")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    return encode(fig)


def importance_figure(study: optuna.Study) -> tuple[str | None, str]:
    """Bar chart of parameter importance, or None and why it cannot be computed yet."""
    if len(_complete(study.get_trials(deepcopy=False))) < 2:
        return None, "parameter importance needs at least two complete trials"
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, f"parameter importance not computable: {exc}"
    if not imp:
        return None, "no parameter varied between complete trials"
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1))
    ax.barh(names, [imp[n] for n in names], color="#1f77b4")
    ax.set(xlabel="importance (PED-ANOVA, normalised)", title="which parameters mattered")
    fig.tight_layout()
    return encode(fig), ""


def _axis_position(dist: Any, values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Values of one parameter on a [0, 1] axis, and the tick labels at 0 and 1 (or per choice)."""
    if isinstance(dist, CategoricalDistribution):
        idx = [dist.choices.index(v) for v in values]
        n = max(len(dist.choices) - 1, 1)
        return np.array(idx, float) / n, [str(c) for c in dist.choices]
    assert isinstance(dist, FloatDistribution)
    f = np.log10 if dist.log else (lambda v: np.asarray(v, float))
    lo, hi = f(dist.low), f(dist.high)
    return (f(np.array(values, float)) - lo) / max(hi - lo, 1e-12), [f"{dist.low:.3g}", f"{dist.high:.3g}"]


def parallel_figure(trials: list[FrozenTrial]) -> str | None:
    """Parallel coordinates of the complete trials: one axis per parameter, lines coloured by the score."""
    done = _complete(trials)
    if not done:
        return None
    names = list(done[0].distributions)
    values = np.array([t.value for t in done], float)
    cols, ticks = [], []
    for n in names:
        pos, labels = _axis_position(done[0].distributions[n], [t.params[n] for t in done])
        cols.append(pos)
        ticks.append(labels)
    data = np.stack([*cols, (values - values.min()) / max(np.ptp(values), 1e-12)], axis=1)
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names) + 2), 4.2))
    cmap = plt.get_cmap("viridis")
    norm = (values - values.min()) / max(np.ptp(values), 1e-12)
    for i in np.argsort(values):
        best = i == int(np.argmax(values))
        ax.plot(range(data.shape[1]), data[i], color="#d62728" if best else cmap(norm[i]), lw=2.5 if best else 1,
                alpha=1 if best else 0.75, zorder=3 if best else 2)  # fmt: skip
    for j, labels in enumerate(ticks):
        ax.axvline(j, color="black", lw=0.6)
        spots = np.linspace(0, 1, len(labels)) if len(labels) > 2 or j >= len(names) else [0, 1]
        for s, lab in zip(spots, labels, strict=False):
            ax.text(j + 0.03, s, lab, fontsize=7, va="center")
    j = len(names)
    ax.axvline(j, color="black", lw=0.6)
    ax.text(j + 0.03, 0, f"{values.min():.3f}", fontsize=7, va="center")
    ax.text(j + 0.03, 1, f"{values.max():.3f}", fontsize=7, va="center")
    ax.set_xticks(range(len(names) + 1), [*names, "score"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title("parallel coordinates of complete trials (red: best; colour: validation TSTR)")
    fig.tight_layout()
    return encode(fig)


def _grid(out: Path, t: FrozenTrial) -> str | None:
    grids = sorted((out / str(t.user_attrs.get("folder", "")) / "run" / "samples").glob("step-*.png"))
    return base64.b64encode(grids[-1].read_bytes()).decode("ascii") if grids else None


# ------------------------------------------------------------------------------------------- page
def _table(head: list[str], rows: list[list[Any]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return (
        out
        + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def _params(t: FrozenTrial) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())


def render(study: optuna.Study, out: Path, summary: dict[str, Any]) -> str:
    trials = study.get_trials(deepcopy=False)
    done = sorted(_complete(trials), key=lambda t: -float(t.value or 0))
    imp_fig, imp_note = importance_figure(study)
    par = parallel_figure(trials)
    img = lambda b64, alt: f'<img src="data:image/png;base64,{b64}" alt="{alt}" style="max-width:100%">'  # noqa: E731
    s = summary
    facts = [
        ["model", s["model"]], ["data", s["dataset"]], ["budget per trial", s["budget"]],
        ["trials (complete / pruned / failed)", f"{s['complete']} / {s['pruned']} / {s['failed']}"],
        ["validation TRTR AUROC (real training images)", s["val_trtr_auroc"]],
        ["base config: validation TSTR", s["baseline_value"]],
        ["best: validation TSTR", f"{_fmt(s['best_value'])} (trial {s['best_trial']})" if done else "none yet"],
    ]  # fmt: skip
    grids = ""
    for t in done[:N_GRIDS]:
        b64 = _grid(out, t)
        caption = (
            f"trial {t.number}: validation TSTR {t.value:.3f}, {t.user_attrs.get('steps', '?')} steps; {_params(t)}"
        )
        grids += f"<h3>{html.escape(caption)}</h3>" + (img(b64, f"trial {t.number}") if b64 else "<p>no grid</p>")
    rows = [[t.number, t.state.name.lower() + (" (base)" if t.user_attrs.get("baseline") else ""), t.value,
             t.user_attrs.get("val_tstr_auroc"), t.user_attrs.get("recall"), t.user_attrs.get("coverage"),
             t.user_attrs.get("privacy", ""), t.user_attrs.get("steps"), _params(t)] for t in trials]  # fmt: skip
    notes = "".join(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in s.get("notes") or [])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medsyn tune: {html.escape(s["model"])}</title>
<style>{CSS}</style></head><body><main>
<h1>Hyper-parameter search: {html.escape(s["model"])}</h1>
<p class="sub">medsyn {html.escape(__version__)}; Optuna {html.escape(optuna.__version__)}: TPE sampler, median
pruner on the per-stage validation scores. The objective is the validation TSTR AUROC: a {html.escape(s["classifier"])}
trained on the trial's synthetic images, early-stopped on one half of the validation patients and scored on the
other half. The test split is never read: evaluate the tuned config on it with <code>medsyn evaluate</code>.</p>
{notes}
{_table(["", ""], facts)}
<h2>Optimisation history</h2>{img(history_figure(trials, s["baseline_value"], s["val_trtr_auroc"]), "history")}
<h2>Parameter importance</h2>{img(imp_fig, "importance") if imp_fig else f"<p>{html.escape(imp_note)}</p>"}
<h2>Parallel coordinates</h2>{img(par, "parallel coordinates") if par else "<p>no complete trial yet</p>"}
<h2>Best trials' samples</h2>
<p>Each grid: the EMA generator's samples at the end of the trial's training, one row per label group.</p>{grids}
<h2>All trials</h2>
{_table(["trial", "state", "value", "val TSTR", "recall", "coverage", "privacy (DCR)", "steps", "parameters"], rows)}
<p>Use the best config: <code>medsyn train --config best.yaml --out RUN</code>. Browse the study:
<code>optuna-dashboard study.db</code>. Every trial as CSV: <code>trials.csv</code>.</p>
</main></body></html>
"""


def write_outputs(
    study: optuna.Study, base: TrainConfig, cfg: Any, out: Path, quiet: bool = True, page: bool = True
) -> dict[str, Any]:
    """trials.csv, best.yaml (once a trial completed), tune.json's summary and (`page`) tune.html."""
    trials = study.get_trials(deepcopy=False)
    done = _complete(trials)
    base_trials = [t for t in done if t.user_attrs.get("baseline")]
    budget = " and ".join(x for x in (f"{cfg.budget_s:g} s" if cfg.budget_s else "",
                                      f"{cfg.steps} steps" if cfg.steps else "") if x)  # fmt: skip
    best = max(done, key=lambda t: float(t.value)) if done else None  # type: ignore[arg-type]
    summary: dict[str, Any] = {
        "model": base.model, "dataset": study.user_attrs.get("dataset", "?"), "budget": budget,
        "complete": len(done), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("interrupted") for t in trials),
        "val_trtr_auroc": study.user_attrs.get("val_trtr_auroc"),
        "baseline_value": base_trials[-1].value if base_trials else None,
        "best_trial": best.number if best else None, "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "classifier": f"{cfg.classifier.model} ({cfg.classifier.epochs} epochs at most)",
        "notes": study.user_attrs.get("notes", []),
        "medsyn_version": __version__,
    }  # fmt: skip
    write_trials_csv(trials, out / "trials.csv")
    if best is not None:
        write_best_yaml(best, base, summary["baseline_value"], budget, out / "best.yaml")
        summary["best_yaml"] = str(out / "best.yaml")
    if page:
        write_text_atomic(out / "tune.html", render(study, out, summary))
    stored = json.loads((out / "tune.json").read_text())
    write_json_atomic(out / "tune.json", to_jsonable({**stored, "summary": summary}))
    if not quiet:
        print(
            f"best: trial {summary['best_trial']}, validation TSTR {_fmt(summary['best_value'])} "
            f"(base config {_fmt(summary['baseline_value'])}, validation TRTR {_fmt(summary['val_trtr_auroc'])})"
        )
        print(f"config: {out / 'best.yaml'}  trials: {out / 'trials.csv'}  report: {out / 'tune.html'}")
    return summary
