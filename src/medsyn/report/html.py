"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts, no external assets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsyn.evaluate.verdicts import REID_FPR, THRESHOLDS
from medsyn.report.markup import (
    LEVEL_TEXT,
    _badge,
    _ci,
    _cls,
    _e,
    _img,
    _kv,
    _notes,
    _num,
    _pct,
    _sig,
    _table,
    _verdict_box,
    round_up,
)
from medsyn.report.saliency import saliency_section
from medsyn.report.segmentation import segmentation_section

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1d2125;max-width:1100px;margin:24px auto;
padding:0 20px;line-height:1.45;font-size:14px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:34px}
h3{font-size:15px;margin:20px 0 6px}.sub{color:#5b6570;margin:0 0 16px}
.cards{display:flex;gap:12px;margin:16px 0}.card{flex:1;border-radius:8px;padding:12px 14px;border:1px solid}
.card .q{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#3b434b}
.card .l{font-size:22px;font-weight:700;margin:2px 0 6px}.card .r{font-size:12.5px}
.pass{background:#eaf6ec;border-color:#9fd3a9}.pass .l{color:#1e7b34}
.warn{background:#fff6e0;border-color:#f0cf7a}.warn .l{color:#9a6700}
.fail{background:#fdecec;border-color:#f1a7a7}.fail .l{color:#b42318}
.na{background:#f1f3f5;border-color:#cfd4d9}.na .l{color:#5b6570}
.badge{display:inline-block;border-radius:4px;padding:0 6px;font-size:11.5px;font-weight:700;border:1px solid}
.verdict{border-radius:8px;padding:10px 14px;border:1px solid;margin:10px 0}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}th,td{border:1px solid #dde1e5;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f5f7f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.notes{background:#fff8e6;border-left:4px solid #f0b400;padding:8px 14px;margin:12px 0}
.notes li{margin:2px 0}.muted{color:#5b6570;font-size:12.5px}img{max-width:100%;height:auto;display:block;margin:6px 0}
code{background:#f1f3f5;padding:0 3px;border-radius:3px;font-size:12.5px}
"""


# --------------------------------------------------------------------------------------------- sections


def _header(m: Mapping[str, Any]) -> str:
    real, syn = m["data"]["real"], m["data"]["synthetic"]
    cards = "".join(
        f'<div class="card {_cls(m["verdicts"][k]["level"])}"><div class=q>{q}</div>'
        f'<div class=l>{LEVEL_TEXT[m["verdicts"][k]["level"]]}</div><div class=r>{_e(m["verdicts"][k]["reason"])}</div></div>'
        for k, q in (("useful", "Useful?"), ("realistic", "Realistic?"), ("private", "Private?"))
    )
    mode = "quick (small classifier, few epochs: a screening result)" if m["settings"]["quick"] else "full"
    warning = m.get("fidelity", {}).get("warning")
    return (
        "<h1>Synthetic data evaluation</h1>"
        f"<p class=sub>{_num(syn['images'])} synthetic images from <code>{_e(syn['location'])}</code> against "
        f"{_e(real['dataset'])} (<code>{_e(real['spec'])}</code>) at {real['size']} px · mode: {mode} · "
        f"medsyn {_e(m['medsyn_version'])}</p><p class=sub>Generator training: {training_text(syn.get('training'))}"
        f"{dp_text(syn.get('differential_privacy'))}</p>"
        + (f'<div class="verdict fail"><b>Warning</b> — {_e(warning)}</div>' if warning else "")
        + f"<div class=cards>{cards}</div>"
    )


def training_text(progress: Mapping[str, Any] | None) -> str:
    """The generator's training progress from the synthetic manifest ("unknown" for sets that lack it)."""
    if not progress:
        return "unknown (the synthetic set does not record how long its generator trained)"
    steps, planned = progress.get("steps"), progress.get("steps_planned")
    text = f"{_num(steps)} of {_num(planned)} steps" if planned else f"{_num(steps)} steps"
    text += f", {_num(progress.get('images_seen'))} images seen"
    if progress.get("train_seconds") is not None:
        text += f", {progress['train_seconds']:.0f} s"
    reason = progress.get("stop_reason")
    if reason == "time-limit":
        text += " — stopped by the time limit before the planned steps"
    elif reason:
        text += f" ({_e(reason)})"
    return text


def dp_text(dp: Mapping[str, Any] | None) -> str:
    """' · trained with (ε, δ)-DP: ε = …, δ = …' for a generator trained with --dp-epsilon, else ''."""
    if not dp:
        return ""
    voided = "" if dp.get("holds_for_this_set", True) else f" — not for this set: {_e(dp.get('why'))}"
    unit = "patient" if dp.get("train_patients") else "training image"
    return (f" · trained with (ε, δ)-DP: ε = {round_up(dp['epsilon'])}, δ = {dp['delta']:.2g} (per {unit}; "
            f"noise multiplier {dp['noise_multiplier']:.3g}, clipping norm {dp['max_grad_norm']:g}, "
            f"{_num(dp['steps'])} steps at sampling rate {dp['sample_rate']:.3g}){voided}")


def _data(m: Mapping[str, Any], real_images: bool) -> str:
    d, s = m["data"], m["settings"]
    real, syn = d["real"], d["synthetic"]
    splits = real["splits"]
    clf = s["utility"]["classifier"]
    reid = s["reid"]
    backbone = m.get("fidelity", {}).get("backbone", {})
    gen = syn.get("generator") or {}
    rows = [
        ("Real dataset", f"{_e(real['dataset'])} — <code>{_e(real['spec'])}</code>"),
        ("Real cache", f"<code>{_e(real['cache'])}</code> (content hash {_e(real.get('content_hash'))})"),
        ("Real images (patients)", " · ".join(
            f"{name} {_num(sp['images'])} ({_num(sp['patients'])})" for name, sp in splits.items())
         + f" — split by patient, seed {_e(real.get('split_seed'))}"),
        ("Label policy", _e(real.get("label_policy"))),
        ("Classes evaluated", _e(", ".join(d["classes"]))),
        ("Synthetic set", f"<code>{_e(syn['location'])}</code> ({_e(syn['kind'])}), {_num(syn['images'])} images"),
        ("Generator", _e(", ".join(f"{k}: {v}" for k, v in gen.items() if k != "generators")) or "not recorded"),
        ("Image size", f"{real['size']} px, {real['channels']} channel(s)"),
        ("Feature backbone", f"{_e(backbone.get('name', 'none'))} — {_e(backbone.get('implementation', backbone.get('skipped', '')))}"
         f" <span class=muted>({_e(backbone.get('trained_on', ''))})</span>"),
        ("Utility classifiers", f"{_e(clf['model'])}, up to {clf['epochs']} epochs (early stopping on real val, "
         f"patience {clf['patience']}), batch {clf['batch_size']}, seeds {_e(s['utility']['seeds'])}"),
        ("Bootstrap", f"{s['utility']['n_bootstrap']} resamples of patients, {100 * s['utility']['ci_level']:g}% "
         f"percentile intervals, seed {s['utility']['bootstrap_seed']}"),
        ("Re-identification attacker", f"siamese {_e(reid['encoder'])} encoder, {_e(reid['head'])} head, up to "
         f"{reid['epochs']} × {reid['steps_per_epoch']} steps of {reid['batch_pairs']} pairs, seed {reid['seed']}"),
        ("Saved models", _models(m.get("models") or {})),
        ("Seed · device", f"{s['seed']} · {_e(s['device'])}"),
        ("medsyn version", _e(m["medsyn_version"])),
    ]  # fmt: skip
    counts = _table(
        ["class", "real train", "real val", "real test", "synthetic"],
        ([_e(c)] + [_num(splits[k]["positives"][c]) for k in ("train", "val", "test")]
         + [_num(syn["positives"].get(c))] for c in d["classes"]),
        numeric=(1, 2, 3, 4),
    )  # fmt: skip
    notes = list(d.get("notes", []))
    if real_images:
        notes.append("This report shows real training images (sample grid, closest pairs). Share it only where "
                     "the real data may be shared, or re-run with --no-real-images.")  # fmt: skip
    return f"<h2>Data and settings</h2>{_notes(notes)}{_kv(rows)}<h3>Positive images per class</h3>{counts}"


def _models(models: Mapping[str, Any]) -> str:
    """The models folder entries of metrics.json, one line each."""
    lines = [f"<code>{_e(v['path'])}</code> — {_e(v['what'])}" for k, v in models.items() if k != "note"]
    if not lines:
        return "none"
    return "<br>".join(lines) + f" <span class=muted>({_e(models.get('note', ''))})</span>"


def _utility(m: Mapping[str, Any], fig: str | None, roc: str | None) -> str:
    u = m["utility"]
    out = "<h2>Useful? — utility for a downstream classifier</h2>" + _verdict_box(m["verdicts"]["useful"], "Useful?")
    if "trtr" not in u:
        return out
    out += ("<p>Three classifiers are trained — on real images (TRTR), on synthetic images only (TSTR), and on "
            "both — and all are tested on the same held-out real patients. Intervals resample patients.</p>")  # fmt: skip
    out += _img(fig, "per-class AUROC")
    ratio = u["ratio"]
    per_class = ratio.get("per_class")  # absent from metrics.json written before it existed
    rows = []
    for c in u["trtr"]["classes"]:
        gain = u["augmentation_gain"]["per_class"][c]
        rows.append([_e(c)] + [_ci(u[s]["classes"][c]) for s in ("trtr", "tstr", "augmented")]
                    + [_ci(gain, "gain")] + ([_ci(per_class[c], "value")] if per_class else []))  # fmt: skip
    rows.append(["<b>mean</b>"] + [_ci(u[s], "mean_auroc", "mean_ci_low", "mean_ci_high") for s in ("trtr", "tstr", "augmented")]
                + [_ci(u["augmentation_gain"], "mean", "mean_ci_low", "mean_ci_high")]
                + ([_ci(ratio["tstr_over_trtr"], "value")] if per_class else []))  # fmt: skip
    out += _table(["class", "TRTR AUROC (95% CI)", "TSTR AUROC", "real + synthetic", "gain from synthetic"]
                  + (["TSTR / TRTR"] if per_class else []), rows)  # fmt: skip
    out += _kv([
        ("TSTR / TRTR (mean AUROC)", _ci(ratio["tstr_over_trtr"], "value")),
        ("(TSTR − 0.5) / (TRTR − 0.5)", _ci(ratio["tstr_over_trtr_above_chance"], "value")),
        ("Test set", f"{_num(u['n_images'])} images of {_num(u.get('n_patients'))} patients, "
                     f"resampling unit: {_e(u['resample_unit'])}"),
    ])  # fmt: skip
    seed = u["seeds"][0]
    several = (f"The curves are those of the first seed ({seed}), not a seed average: their AUROC is that seed's "
               "(<code>per_seed[0]</code> in metrics.json), while the table gives the mean over seeds. "
               if u.get("n_seeds", 1) > 1 else "")  # fmt: skip
    out += "<h3>ROC curves on the held-out real patients</h3>" + _img(
        roc, "ROC curves per class",
        f"One panel per class: TRTR, TSTR and real + synthetic classifiers scored on the same real test images. "
        f"{several}" + (f"The TRTR classifier of seed {seed} is the one saved in <code>models/classifier</code>."
                        if "classifier" in (m.get("models") or {}) else ""))  # fmt: skip
    return out + _notes(u.get("notes", []))


def _segmentation(m: Mapping[str, Any], figs: Mapping[str, str | None]) -> str:
    """Image + mask sets: the segmentation utility, its verdict, divergences and triplets (nothing otherwise)."""
    seg = m.get("segmentation")
    if seg is None:
        return ""
    verdict = _verdict_box(seg["verdict"], "Segmentation utility") if "verdict" in seg else ""
    if "skipped" in seg:
        return f"<h3>Segmentation utility</h3>{verdict}<p>Not assessed: {_e(seg['skipped'])}</p>"
    div = seg.get("divergence")
    section = segmentation_section(seg, None if not div or "skipped" in div else div, figs.get("segmentation"),
                                   bool(seg.get("silver_standard")))  # fmt: skip
    return section.replace("</h3>", "</h3>" + verdict, 1)


def _diversity(m: Mapping[str, Any], figs: Mapping[str, str | None]) -> str:
    d = m.get("diversity") or {}
    out = "<h3>Diversity of the synthetic set</h3>"
    if "skipped" in d or not d:
        return out + f"<p>Not assessed: {_e(d.get('skipped', 'not run'))}</p>"
    out += _badge(d["verdict"]["level"]) + f" {_e(d['verdict']['reason'])}"
    out += _table(["", "synthetic", "real training"], [
        ["images compared", _num(d["n"]), _num(d["n"])],
        ["distinct modes (closer than the real 5th-percentile nearest-other distance)",
         _num(d["synthetic_modes"]), _num(d["real_modes"])],
        ["median distance to the nearest other image", _sig(d["synthetic_median_nn"]), _sig(d["real_median_nn"])],
    ], (1, 2))  # fmt: skip
    return out + _img(figs.get("synthetic_pairs"), "closest synthetic pairs",
                      f"The closest pairs of synthetic images ({_e(d['space'])}); red distances are below the "
                      "real images' 5th-percentile nearest-other distance. Identical-looking pairs mean repeats.")


def _fidelity(m: Mapping[str, Any], figs: Mapping[str, str | None]) -> str:
    f = m["fidelity"]
    out = "<h2>Realistic? — fidelity</h2>" + _verdict_box(m["verdicts"]["realistic"], "Realistic?")
    out += _diversity(m, figs)
    if "fid" not in f:
        return out
    fid, kid, prdc, inten = f["fid"], f["kid"], f["prdc"], f["intensity"]
    base = fid.get("baseline") or {}
    out += (f"<h3>Distribution in feature space</h3><p>Features: <b>{_e(fid['backbone'])}</b> — "
            f"{_e(fid['implementation'])}. Reference: {_e(f['reference'])}. FID and KID are comparable only with "
            "the same backbone and N.</p>")  # fmt: skip
    if f.get("not_assessable"):
        out += f'<div class="verdict na"><b>Not assessable</b> — {_e(f["not_assessable"])}</div>'
    prdc_n = f"k = {prdc['k']}, N = {_num(prdc['n_real'])} real, {_num(prdc['n_synthetic'])} synthetic"
    rows = [
        ["FID (all images)", _sig(fid["fid"]), f"N real {_num(fid['n_real'])}, N synthetic {_num(fid['n_synthetic'])}, D {fid['dim']}"],
        ["FID synthetic vs real, same N", f"{_sig(base.get('synthetic_vs_real'))} ± {_sig(base.get('synthetic_vs_real_std'), 2)}",
         f"N = {_num(base.get('n'))} per side, {_num(base.get('repeats'))} draws"],
        ["FID real vs real (baseline)", f"{_sig(base.get('real_vs_real'))} ± {_sig(base.get('real_vs_real_std'), 2)}",
         "two disjoint real subsets: what a perfect generator would reach at this N; split "
         + _e(base.get("split", "by image")) + (f" ({_e(base['note'])})" if base.get("note") else "")],
        ["KID", f"{_sig(kid['kid'])} ± {_sig(kid['kid_std'], 2)}", f"{kid['n_subsets']} subsets of {kid['subset_size']}"],
        ["precision · recall", f"{_num(prdc['precision'])} · {_num(prdc['recall'])}", prdc_n],
        ["density · coverage", f"{_num(prdc['density'])} · {_num(prdc['coverage'])}", prdc_n],
        ["intensity KL real‖synthetic · synthetic‖real", f"{_sig(inten['kl_real_synthetic'], 3)} · {_sig(inten['kl_synthetic_real'], 3)}",
         f"nats, {inten['bins']} bins; Jensen–Shannon {_sig(inten['js'], 3)}"],
    ]  # fmt: skip
    out += _table(["metric", "value", "details"], rows) + _notes(fid.get("notes", []))
    per_class = []
    for c in f["per_class_fid"]:
        res = c["result"] or {}
        base_c = res.get("baseline") or {}
        per_class.append([_e(c["name"]), _num(c["n_real"]), _num(c["n_synthetic"]), _sig(res.get("fid")),
                          _sig(base_c.get("real_vs_real")), _e(c["skipped"] or "")])  # fmt: skip
    out += "<h3>Per-class FID</h3>" + _table(
        ["class", "real images", "synthetic images", "FID", "real-vs-real baseline", "skipped"], per_class, (1, 2, 3, 4)
    )
    return out + _img(figs["intensity"], "intensity histograms")


def _privacy(m: Mapping[str, Any], figs: Mapping[str, str | None], real_images: bool) -> str:
    p = m["privacy"]
    out = "<h2>Private? — memorisation, membership and re-identification</h2>"
    out += _verdict_box(m["verdicts"]["private"], "Private?")
    out += _notes([p["filter"]] if p.get("filter") else [])
    out += _table(["check", "verdict", "reason"], ([_e(c["check"]), _badge(c["level"]) + (
        "" if c.get("decides", True) else " <span class=muted>(filtered: does not decide)</span>"), _e(c["reason"])]
        for c in p["checks"]))  # fmt: skip
    out += ("<h3>Distance to the closest training image (DCR)</h3><p>For every synthetic image, the distance to its "
            "nearest real training image, compared with the same distance for held-out real images of patients the "
            "generator never saw. Without copying, about 1% of synthetic images fall below the held-out 1st "
            "percentile.</p>")  # fmt: skip
    rows = []
    for key, d in p["dcr"].items():
        if "skipped" in d:
            rows.append([_e(key), "–", "–", "–", "–", "–", _e(d["skipped"])])
            continue
        rows.append([_e(f"{key} ({d['space']})"), _num(d["median_synthetic"]), _num(d["median_holdout"]),
                     f"{_pct(d['fraction_below_p1'])} <span class=muted>(expect {_pct(d.get('expected_p1'))}; "
                     f"p={d['pvalue_p1']:.2g})</span>",
                     f"{_pct(d['fraction_below_p5'])} <span class=muted>(expect {_pct(d.get('expected_p5'))}; "
                     f"p={d['pvalue_p5']:.2g})</span>",
                     _num(d["n_identical"]), _e("; ".join([f"{d['n_synthetic']} synthetic, {d['n_train']} training, "
                                                       f"{d['n_holdout']} held-out", *d.get("notes", [])]))])  # fmt: skip
    out += _table(["space", "median DCR synthetic", "median DCR held-out", "below held-out 1st pct (p: precedence test)",
                   "below 5th pct", "identical", "details"], rows, (1, 2, 5))  # fmt: skip
    out += _img(figs["distances"], "DCR histograms")
    if real_images:
        out += "<h3>Closest pairs</h3>" + _img(
            figs["closest"], "closest pairs",
            "Synthetic images (top) with the smallest pixel-space distance to a real training image (below). "
            "Red distances fall below the held-out 1st percentile, as about 1% of synthetic images do without any "
            "copying; look for near-identical pairs (memorised copies), not for red labels.")
    else:
        out += "<h3>Closest pairs</h3><p class=muted>Left out: the report was made without real images.</p>"
    out += ("<h3>Membership inference</h3><p class=muted>Each attack scores every real image and tries to tell the "
            "generator's training images (members) from held-out patients' images: distance (to the nearest synthetic "
            "image), density ratio (DOMIAS: synthetic density over the density of validation patients' images) and, "
            "with <code>evaluate --run</code>, the trained model's own score (discriminator logit or denoising loss). "
            "AUROC 0.5 is chance; TPR at 1% FPR is the share of members caught while 1% of non-members are flagged."
            "</p>")  # fmt: skip
    rows = []
    for key, r in p["membership_inference"].items():
        if "skipped" in r:
            rows.append([_e(key), "–", "–", "–", _e(r["skipped"])])
        else:  # results from before the attack field were the distance attack
            score = r.get("score", f"-distance to the nearest of {r['n_synthetic']} synthetic images")
            rows.append([_e(f"{r.get('attack', 'distance')} ({r['space']})"), _ci(r), _pct(r.get("tpr_at_1pct_fpr")),
                         _e(f"{r['n_members']} / {r['n_non_members']}"),
                         _e("; ".join([f"score: {score}; CI resamples {r['resampling']}", *r.get("notes", [])]))])  # fmt: skip
    out += _table(["attack (space)", "AUROC (95% CI)", "TPR at 1% FPR", "members / non-members", "details"], rows)
    out += _img(figs["mia_roc"], "membership inference ROC")
    out += "<h3>Re-identification</h3>"
    reid = p["reidentification"]
    if "skipped" in reid:
        return out + f"<p>Not assessed: {_e(reid['skipped'])}</p>"
    ver, match = reid["verification"], reid["matching"]
    rows = [
        ("Attacker: verification AUROC on held-out patients", _ci(ver) + f" <span class=muted>({ver['n_patients']} patients, "
         f"{_num(ver['n_positive_pairs'])} same-patient / {_num(ver['n_negative_pairs'])} different-patient pairs)</span>"),
        ("Synthetic images linked at the pair-level 1% FPR threshold", _frac(match["synthetic"])
         + f" vs held-out baseline {_frac(match.get('heldout_baseline', {}))}"),
    ] + [
        (f"Linked at the threshold that links {100 * float(fpr):g}% of held-out patients' images", _frac(v["synthetic"])
         + f" <span class=muted>(held-out {_pct(v['heldout_fraction'])})</span>")
        for fpr, v in match.get("gallery_calibrated", {}).items()
    ] + [("Training patients linked at the pair-level 1% FPR threshold", f"{_num(match['n_train_patients_linked'])} of {_num(match['n_train_patients'])}")]  # fmt: skip
    out += _kv(rows)
    return out + _img(figs["reid"], "re-identification scores",
                      f"The verdict uses the {100 * REID_FPR:g}% held-out calibration.")


def _frac(entry: Mapping[str, Any]) -> str:
    if not entry:
        return "–"
    return (f"{_pct(entry['fraction'])} <span class=muted>({entry['n_matched']} of {entry['n']}, 95% CI "
            f"{_pct(entry['ci_low'])}–{_pct(entry['ci_high'])})</span>")  # fmt: skip


def _rate(entry: Mapping[str, Any]) -> str:
    """k of n with its exact interval, as the reader-study analysis gives it."""
    return (f"{_pct(entry['value'])} <span class=muted>({entry['k']} of {entry['n']}, 95% CI "
            f"{_pct(entry['ci_low'])}–{_pct(entry['ci_high'])})</span>")  # fmt: skip


def _reader_study(m: Mapping[str, Any]) -> str:
    """Can people tell? The pooled reader-study figures (`medsyn reader-study analyze` has the full page)."""
    rs = m.get("reader_study")
    if not rs:
        return ""
    pooled, kappa, study = rs["pooled"], rs["fleiss_kappa"], rs["study"]
    rows = [(name, _rate(pooled[name])) for name in ("accuracy", "sensitivity", "specificity")]
    rows += [("p-value against chance (binomial)", _sig(pooled.get("p_value_vs_chance"))),
             ("ROC AUC from confidence", _num(pooled.get("auroc"))),
             ("Fleiss' kappa", _num(kappa.get("value")) if kappa.get("value") is not None else _e(kappa.get("note"))),
             ("readers (complete)", f"{study['readers']} ({study['complete_readers']})"),
             ("images (real / synthetic)", f"{study['images']} ({study['real']} / {study['synthetic']})")]  # fmt: skip
    return f"<h2>Reader study: can people tell?</h2><p>{_e(rs['verdict'])}</p>{_kv(rows)}"


def _methods(m: Mapping[str, Any]) -> str:
    out = ("<h2>How the verdicts are decided</h2><p class=muted>Every rule below is in one module, "
           "<code>medsyn.evaluate.verdicts</code> (src/medsyn/evaluate/verdicts/, every threshold in thresholds.py; docs/ARCHITECTURE.md explains "
           "the terms).</p>")  # fmt: skip
    for question, lines in THRESHOLDS.items():
        out += f"<h3>{_e(question)}</h3><ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"
    timings = m.get("timings") or {}
    if timings:
        out += "<h3>Run time by stage</h3>" + _table(
            ["stage", "wall seconds", "CPU seconds (all threads)", "peak memory MB (process)"],
            ([_e(k), f"{v['wall_s']:.1f}", f"{v['cpu_s']:.1f}", _num(v.get("peak_rss_mb"), 0)]
             for k, v in timings.items()), (1, 2, 3))  # fmt: skip
    return out


def render(metrics: Mapping[str, Any], figs: Mapping[str, str | None], real_images: bool) -> str:
    """The whole page as a string."""
    body = (_header(metrics) + _data(metrics, real_images)
            + "<h2>Samples</h2>" + _img(figs["samples"], "sample grid",
                                        "A few images per class (chosen at random with the evaluation seed).")
            + _utility(metrics, figs["utility"], figs["utility_roc"])
            + saliency_section(metrics, figs.get("saliency"), real_images) + _segmentation(metrics, figs)
            + _fidelity(metrics, figs) + _privacy(metrics, figs, real_images)
            + _reader_study(metrics) + _methods(metrics))  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>medsyn evaluation report</title><style>{CSS}</style></head><body>{body}"
        f"<p class=muted>Written by medsyn {_e(metrics['medsyn_version'])} (medsyn evaluate). "
        "Figures are embedded; this file has no external dependencies.</p></body></html>\n"
    )
