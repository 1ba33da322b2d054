"""Benchmark pages, self-contained HTML in the evaluation report's style: the sweep's figure (sweep.png) and
report.html, the model comparison's compare.html, and the epsilon sweep's epsilon.png and epsilon.html (the
comparison page's columns with the privacy figures in front)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.io import atomic_path, write_text_atomic
from medsyn.report.figures import SETTING_COLORS, SETTING_NAMES, encode, plt
from medsyn.report.html import CSS, LEVEL_TEXT
from medsyn.report.markup import round_up

AXIS = {"classes": "number of classes", "samples": "real training images per class (cap)",
        "resolution": "image size (px)"}


def _errorbar(ax: Any, x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, **kw: Any) -> None:
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    ax.errorbar(x, y, yerr=np.nan_to_num(yerr), marker="o", capsize=3, **kw)


def _per_class_panel(ax: Any, x: np.ndarray, points: Sequence[Mapping[str, Any]]) -> None:
    """TSTR/TRTR of each class per point (a class a point leaves out is a gap): the mean can hide a finding
    whose detail the generator loses, e.g. at a higher resolution."""
    classes = list(dict.fromkeys(c for p in points for c in p["utility"]["ratio"].get("per_class") or {}))
    for c in classes:
        e = [(p["utility"]["ratio"].get("per_class") or {}).get(c) or {} for p in points]
        y, lo, hi = (np.array([v.get(k) if v.get(k) is not None else np.nan for v in e], float)
                     for k in ("value", "ci_low", "ci_high"))  # fmt: skip
        _errorbar(ax, x, y, lo, hi, label=c, alpha=0.85)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set(ylabel="TSTR / TRTR", title="relative performance per class")


def sweep_figure(points: Sequence[Mapping[str, Any]], sweep: str) -> str:
    """Left: mean AUROC of TRTR / TSTR / augmented per point; middle: TSTR/TRTR ratios; right (when the results
    have it): TSTR/TRTR per class. 95% CIs as bars."""
    x = np.array([p["point"] for p in points], dtype=float)
    per_class = any(p["utility"]["ratio"].get("per_class") for p in points)
    fig, axes = plt.subplots(1, 3 if per_class else 2, figsize=(15 if per_class else 10, 3.8))
    left, right = axes[0], axes[1]
    if per_class:
        _per_class_panel(axes[2], x, points)
    for setting in ("trtr", "tstr", "augmented"):
        u = [p["utility"][setting] for p in points]
        _errorbar(left, x, *(np.array([e[k] for e in u], float) for k in ("mean_auroc", "mean_ci_low", "mean_ci_high")),
                  color=SETTING_COLORS[setting], label=SETTING_NAMES[setting])  # fmt: skip
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.set(ylabel="mean AUROC on real test patients", title="classifier performance")
    spans = []
    for key, label, color in (("tstr_over_trtr", "TSTR / TRTR", SETTING_COLORS["tstr"]),
                              ("tstr_over_trtr_above_chance", "(TSTR-0.5) / (TRTR-0.5)", "#ff7f0e")):  # fmt: skip
        r = [p["utility"]["ratio"][key] for p in points]
        y, lo, hi = (np.array([e[k] for e in r], float) for k in ("value", "ci_low", "ci_high"))
        _errorbar(right, x, y, lo, hi, color=color, label=label)
        spans += [lo, hi]
    finite = np.concatenate(spans)[np.isfinite(np.concatenate(spans))]
    if finite.size:  # near-chance TRTR makes the above-chance CI huge: keep the readable range
        right.set_ylim(max(-0.25, finite.min() - 0.05), min(2.0, max(1.05, finite.max() + 0.05)))
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    right.set(ylabel="synthetic / real", title="relative performance")
    for ax in axes:
        ax.set_xlabel(AXIS[sweep])
        if sweep in ("samples", "resolution") and len(x) > 1 and x.max() / x.min() >= 4:
            ax.set_xscale("log", base=2 if sweep == "resolution" else 10)
        ax.set_xticks(x, [str(int(v)) for v in x])
        ax.minorticks_off()
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return encode(fig)


def _cell(v: Any) -> str:
    if v is None:  # a non-finite number, stored as JSON null
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return html.escape(str(v))


def _ci(entry: Mapping[str, Any], point: str) -> str:
    return f"{_cell(entry[point])} [{_cell(entry['ci_low'])}, {_cell(entry['ci_high'])}]"


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return out + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def _per_class_table(points: Sequence[Mapping[str, Any]]) -> str:
    """TSTR/TRTR per class (rows) and point (columns), as in per_class.csv; empty for older results."""
    per = [p["utility"]["ratio"].get("per_class") or {} for p in points]
    classes = list(dict.fromkeys(c for e in per for c in e))
    if not classes:
        return ""
    rows = [[_cell(c)] + [_ci(e[c], "value") if c in e else "" for e in per] for c in classes]
    return ("<h2>Relative performance per class</h2><p>TSTR/TRTR AUROC of each class [95% paired bootstrap CI]: "
            "a class that falls behind the others as the point grows is one the generator does not keep.</p>"
            + _html_table(["class"] + [_cell(p["point"]) for p in points], rows))  # fmt: skip


def write_sweep_report(summary: Mapping[str, Any], out: Path) -> None:
    """sweep.png and report.html in `out`."""
    cfg, points = summary["config"], summary["points"]
    b64 = sweep_figure(points, cfg["sweep"])
    with atomic_path(out / "sweep.png") as tmp:
        tmp.write_bytes(base64.b64decode(b64))
    head = ["point", "classes", "real train", "synthetic", "generator steps (s)", "TRTR AUROC [95% CI]",
            "TSTR AUROC [95% CI]", "TSTR/TRTR [95% CI]", "above-chance ratio [95% CI]", "aug. gain"]  # fmt: skip
    rows = []
    for p in points:
        u, g = p["utility"], p["generator"]
        trtr = {"v": u["trtr"]["mean_auroc"], "ci_low": u["trtr"]["mean_ci_low"], "ci_high": u["trtr"]["mean_ci_high"]}
        tstr = {"v": u["tstr"]["mean_auroc"], "ci_low": u["tstr"]["mean_ci_low"], "ci_high": u["tstr"]["mean_ci_high"]}
        rows.append([
            _cell(p["point"]), _cell(", ".join(p["classes"])), _cell(p["real_train_images"]),
            _cell(p["synthetic_images"]), f"{g['steps']} ({g['train_s']:.0f} s, {g['stopped_by']})",
            _ci(trtr, "v"), _ci(tstr, "v"), _ci(u["ratio"]["tstr_over_trtr"], "value"),
            _ci(u["ratio"]["tstr_over_trtr_above_chance"], "value"), _cell(u["augmentation_gain"]["mean"]),
        ])  # fmt: skip
    table = _html_table(head, rows) + _per_class_table(points)
    clf = cfg["utility"]["classifier"]
    settings = (
        f"data <code>{html.escape(summary['data']['spec'])}</code> at "
        + (", ".join(str(p["point"]) for p in points) if cfg["sweep"] == "resolution" else str(cfg["size"]))
        + f" px; generator {cfg['model']} "
        f"(width {cfg['width']}, batch {cfg['batch']}, up to {cfg['steps']} steps"
        + (f" or {cfg['budget_s']:.0f} s of training" if cfg.get("budget_s") else "")
        + f" per point); classifier {clf['model']} (up to {clf['epochs']} epochs, early stopping on real val), "
        f"seeds {cfg['utility']['seeds']}, {cfg['utility']['n_bootstrap']} patient-bootstrap replicates; "
        f"medsyn {html.escape(summary['medsyn_version'])}."
    )
    steps = {p["generator"]["steps"] for p in points}
    if any(p["generator"]["stopped_by"] == "budget" for p in points) and len(steps) > 1:
        settings += (
            " <b>Generator training was bounded by time (--budget), and the points reached different numbers of "
            f"steps ({min(steps)} to {max(steps)}): larger sets or images and a busy machine train fewer steps in the same "
            "time. For equally trained generators, bound by --steps alone.</b>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medsyn sweep: {cfg["sweep"]}</title>
<style>{CSS}</style></head><body><main>
<h1>Benchmark sweep: {html.escape(AXIS[cfg["sweep"]])}</h1>
<p>{settings}</p>
<p>At every point the generator is trained on that point's real training images only, a synthetic set of the
same size is drawn with their label distribution, and classifiers trained on real (TRTR), on synthetic (TSTR)
and on both are tested on the same real test patients (the split is made once for the whole sweep). The ratio
TSTR/TRTR is the share of real-data performance the synthetic set keeps; the above-chance ratio
(TSTR-0.5)/(TRTR-0.5) does not credit chance-level AUROC. Intervals: 95% paired bootstrap over test patients.</p>
<img src="data:image/png;base64,{b64}" alt="sweep" style="max-width:100%">
{table}
<p>Per-point details: <code>points/*/result.json</code> (counts, generator steps and time) and
<code>points/*/utility.json</code> (per-class AUROC with CIs); the same rows as CSV: <code>results.csv</code>.</p>
</main></body></html>
"""
    write_text_atomic(out / "report.html", page)


# ---------------------------------------------------------------------- the --compare page
def _png(path: str | None) -> str | None:
    """A PNG file as base64 text (None when absent: a model stopped before its first sample grid)."""
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii") if path else None
    except OSError:
        return None


def _level(level: str | None) -> str:
    level = level or "n/a"
    return f'<span class="badge {"na" if level == "n/a" else level}">{LEVEL_TEXT.get(level, html.escape(level))}</span>'


def _fixed(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and np.isfinite(v) else "n/a"


def _ci3(t: Sequence[Any]) -> str:
    return f"{_cell(t[0])} [{_cell(t[1])}, {_cell(t[2])}]" if t and t[0] is not None else "n/a"


def _train_text(r: Mapping[str, Any]) -> str:
    p = r.get("progress") or {}
    why = html.escape(str(p.get("stop_reason")))
    text = f"{_fixed(p.get('train_seconds'), 0)} s, {p.get('steps', 'n/a')} steps ({why})"
    for s in p.get("stages") or []:  # ldm: the autoencoder and the denoiser
        text += f"<br><span class=muted>{html.escape(s['stage'])}: {s['steps']} steps, {s['train_seconds']:.0f} s"
        text += "</span>"
    return text


#: The columns every comparison page shows for a side, after its own leading columns.
SIDE_HEAD = ["TSTR/TRTR [95% CI]", "TRTR AUROC [95% CI]", "TSTR AUROC [95% CI]", "recall", "coverage",
             "FID (real vs real)", "useful / realistic / private"]  # fmt: skip


def _side_cells(r: Mapping[str, Any]) -> list[str]:
    s = r["summary"]
    return [
        _ci3(s["ratio"]), _ci3(s["trtr"]), _ci3(s["tstr"]), _cell(s["recall"]), _cell(s["coverage"]),
        f"{_fixed(s['fid'], 2)} ({_fixed(s['fid_real_vs_real'], 2)})",
        " ".join(_level(s["verdicts"].get(k)) for k in ("useful", "realistic", "private")),
    ]  # fmt: skip


def _checks(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every privacy check any side has, in order (one column each)."""
    return list(dict.fromkeys(c["check"] for r in results for c in r["summary"]["privacy_checks"]))


def _check_cells(r: Mapping[str, Any], checks: Sequence[str]) -> list[str]:
    level = {c["check"]: c["level"] for c in r["summary"]["privacy_checks"]}
    return [_level(level.get(c)) for c in checks]


def _sampling_text(r: Mapping[str, Any]) -> str:
    g, sampling = r["generate"], r["generate"].get("sampling") or {}
    steps = f", {sampling['ddim_steps']} DDIM steps, guidance {sampling['guidance']:g}" if sampling else ""
    return f"{_fixed(g['wall_s'], 1)} s for {g['images']} images ({_fixed(g['img_per_s'], 1)} img/s{steps})"


def _grids(results: Sequence[Mapping[str, Any]], titles: Sequence[str]) -> str:
    """Each side's last training sample grid (and ldm's reconstructions) and a link to its evaluation report."""
    out = ""
    for r, title in zip(results, titles, strict=True):
        name, folder = html.escape(title), html.escape(r.get("name", r["model"]))  # results before `name`: the model
        out += f"<h3>{name}</h3>" + _figure(_png(r.get("samples")), f"{name} samples",
                                            "the EMA generator's last training sample grid, one row per label "
                                            "group, the same noise in every row")  # fmt: skip
        if r.get("reconstructions"):
            out += _figure(_png(r["reconstructions"]), f"{name} reconstructions",
                           "the autoencoder stage: real training images and their reconstructions")  # fmt: skip
        out += f'<p class=muted>Full evaluation: <a href="{folder}/evaluation/report.html">{folder}/evaluation/report.html</a></p>'
    return out


def _metrics_note(results: Sequence[Mapping[str, Any]]) -> str:
    k = _cell(results[0]["summary"].get("prdc_k")) if results else "n/a"
    return (
        "TSTR/TRTR: the share of the real-data classifier's AUROC that training on the synthetic set keeps (95% "
        "paired bootstrap over test patients). Recall / coverage: the share of real images the synthetic set "
        f"reaches in the real classifier's feature space (PRDC, k = {k}); low values mean mode collapse. FID beside "
        "its real-vs-real baseline at the same N: a model is only as far from the real set as that baseline allows. "
        "Privacy checks: FAIL means synthetic images sit closer to training patients than held-out patients' "
        "images do."
    )


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style></head><body><main>\n{body}\n</main></body></html>\n")  # fmt: skip


def write_compare_report(summary: Mapping[str, Any], out: Path) -> None:
    """compare.html: one row per model (utility with CIs, recall/coverage, FID against real-vs-real, every
    privacy check, verdicts, train and sample time), then each model's sample grid, in the report's style."""
    results, cfg = summary["models"], summary["config"]
    checks = _checks(results)
    head = ["model", *SIDE_HEAD, *checks, "training", "sampling"]
    rows = [[f"<b>{html.escape(r['model'])}</b><br><span class=muted>{html.escape(r['family'])}</span>",
             *_side_cells(r), *_check_cells(r, checks), _train_text(r), _sampling_text(r)]
            for r in results]  # fmt: skip
    loads = ", ".join(f"{html.escape(r['model'])} {_fixed(r['train']['load_before'], 2)} → {_fixed(r['train']['load_after'], 2)}"
                      for r in results)  # fmt: skip
    classifier = "small CNN" if cfg["quick"] else "DenseNet121"
    body = f"""<h1>GAN or diffusion on this data?</h1>
<p class=sub>{len(results)} models, each trained for {cfg["budget_s"]:.0f} s on the same real training split at
{cfg["size"]} px, then a synthetic set drawn and evaluated the same way (classifier {classifier}, seed {cfg["seed"]}, device {html.escape(cfg["device"])}).</p>
{_html_table([html.escape(h) for h in head], rows)}
<p class=muted>{_metrics_note(results)} Training time is wall time on the machine as it was (1-minute load
before → after training: {loads}).</p>
<h2>Samples</h2>
{_grids(results, [r["model"] for r in results])}"""
    write_text_atomic(out / "compare.html", _page("medsyn benchmark: model comparison", body))


def _figure(b64: str | None, alt: str, caption: str) -> str:
    if not b64:
        return f"<p class=muted>({html.escape(alt)}: no image)</p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"><p class=muted>{caption}</p>'


# ---------------------------------------------------------------------- the --sweep epsilon page
NO_DP = "∞ (no DP)"


def epsilon_label(target: float | None) -> str:
    """A point's target epsilon as the table and the figure show it (None: trained without DP)."""
    return NO_DP if target is None else f"{target:g}"


def attack_keys(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Membership-inference attacks with an AUROC at any point, in the evaluation's order (one column each)."""
    return list(dict.fromkeys(k for r in results for k, e in r["summary"].get("membership", {}).items() if "auroc" in e))


def epsilon_figure(results: Sequence[Mapping[str, Any]]) -> str:
    """Three panels over the target epsilon (log axis, no DP at the right end): TSTR/TRTR with its CI, recall
    and coverage, and every membership-inference attack's AUROC with its CI beside the 0.5 of chance."""
    targets = [r["side"]["dp_epsilon"] for r in results]
    finite = [t for t in targets if t is not None]
    right = max(finite) * 10**0.75 if finite else 1.0  # no DP: three quarters of a decade right of the largest epsilon
    x = np.array([right if t is None else t for t in targets], float)
    order = np.argsort(x)
    x, res = x[order], [results[i]["summary"] for i in order]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    _errorbar(axes[0], x, *np.array([e["ratio"] for e in res], float).T, color=SETTING_COLORS["tstr"],
              label="TSTR / TRTR")  # fmt: skip
    axes[0].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[0].set(ylabel="synthetic / real", title="utility: TSTR / TRTR")
    for key in ("recall", "coverage"):
        axes[1].plot(x, np.array([e[key] for e in res], float), marker="o", label=key)
    axes[1].set(ylabel="share of real images reached", title="diversity: recall and coverage", ylim=(-0.02, 1.02))
    for key in attack_keys(results):
        mia = [e.get("membership", {}).get(key) or {} for e in res]
        _errorbar(axes[2], x, *np.array([[m.get(f) for f in ("auroc", "ci_low", "ci_high")] for m in mia], float).T,
                  label=key)  # fmt: skip
    axes[2].axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    axes[2].set(ylabel="AUROC members vs held-out", title="membership inference")
    labels = [epsilon_label(targets[i]) for i in order]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(x, labels)
        ax.minorticks_off()
        if finite and len(finite) < len(targets):  # a gap between the largest epsilon and no DP
            ax.axvline(max(finite) * 10**0.375, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("target ε (log scale)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return encode(fig)


def _dp_cells(r: Mapping[str, Any]) -> list[str]:
    """Target epsilon, epsilon spent (rounded up, never printed below itself), delta and the noise multiplier."""
    dp = r.get("differential_privacy")
    label = html.escape(epsilon_label(r["side"]["dp_epsilon"]))
    if not dp:
        return [f"<b>{label}</b>", "none", "", ""]
    return [f"<b>{label}</b>", round_up(dp["epsilon"]), f"{dp['delta']:.2g}", _fixed(dp["noise_multiplier"], 3)]


def _attack_cell(e: Mapping[str, Any] | None) -> str:
    if not e:
        return "n/a"
    if "auroc" not in e:
        return f"<span class=muted title=\"{html.escape(str(e.get('skipped')))}\">skipped</span>"
    tpr = f"<br><span class=muted>TPR@1%FPR {_cell(e['tpr_at_1pct_fpr'])}</span>"
    return _ci3([e["auroc"], e["ci_low"], e["ci_high"]]) + tpr


def write_epsilon_report(summary: Mapping[str, Any], out: Path) -> None:
    """epsilon.png and epsilon.html: the privacy/utility curve, one row per target epsilon (what DP spent, the
    utility and diversity kept, every membership attack, every privacy check), then each point's samples."""
    results, cfg = summary["points"], summary["config"]
    b64 = epsilon_figure(results)
    with atomic_path(out / "epsilon.png") as tmp:
        tmp.write_bytes(base64.b64decode(b64))
    checks, attacks = _checks(results), attack_keys(results)
    head = ["target ε", "ε spent", "δ", "noise σ", *SIDE_HEAD, *(f"membership inference: {a}" for a in attacks),
            *checks, "training", "sampling"]  # fmt: skip
    rows = [[*_dp_cells(r), *_side_cells(r), *(_attack_cell(r["summary"].get("membership", {}).get(a)) for a in attacks),
             *_check_cells(r, checks), _train_text(r), _sampling_text(r)] for r in results]  # fmt: skip
    short = [f"{r['name']} ({(r.get('progress') or {}).get('steps')} steps, {(r.get('progress') or {}).get('stop_reason')})"
             for r in results if (r.get("progress") or {}).get("steps") != cfg["steps"]]  # fmt: skip
    warning = (f"<p><b>Not every point trained the planned {cfg['steps']} steps: {html.escape(', '.join(short))}. "
               "Their utility is not comparable with the others'; rerun with a larger --budget (or none).</b></p>"
               if short else "")  # fmt: skip
    dp = (f"δ = {cfg['dp_delta']:g}" if cfg["dp_delta"] else "δ = 0.1 / training units",
          f"clipping norm {cfg['dp_max_grad_norm'] or 1:g}", f"per {cfg['dp_unit'] or 'image'}")  # fmt: skip
    classifier = "small CNN" if cfg["quick"] else "DenseNet121"
    body = f"""<h1>Privacy/utility curve: what does differential privacy cost on this data?</h1>
<p class=sub>{len(results)} {html.escape(cfg["model"])} generators (width {cfg["width"]}, batch {cfg["batch"]}), each
trained for {cfg["steps"]} steps on the same real training split at {cfg["size"]} px with DP-SGD to its target ε
({', '.join(dp)}); {NO_DP}: the same network trained without DP. Every synthetic set is drawn and evaluated the same way
(classifier {classifier}, seed {cfg["seed"]}, device {html.escape(cfg["device"])}).</p>
{warning}<img src="data:image/png;base64,{b64}" alt="privacy/utility curve" style="max-width:100%">
{_html_table([html.escape(h) for h in head], rows)}
<p class=muted>ε spent: the RDP accountant's count after the steps taken, rounded up (at most the target).
Noise σ: the noise multiplier DP-SGD calibrated so that the planned steps spend the target. Membership inference:
AUROC of telling the generator's training images from held-out ones by each attack [95% bootstrap CI], 0.5 =
chance; the TPR at 1% FPR is what an attacker who may rarely be wrong achieves. {_metrics_note(results)}</p>
<h2>Samples</h2>
{_grids(results, [f"ε = {epsilon_label(r['side']['dp_epsilon'])}" for r in results])}"""
    write_text_atomic(out / "epsilon.html", _page("medsyn benchmark: privacy/utility curve", body))
