"""`medsyn evaluate`: one run that answers Useful? Realistic? Private? for a synthetic set, in one report.

    metrics = evaluate("phantom?n=2000", "synthetic/cgan64", "eval/cgan64", quick=True)

The steps, each a typed stage of `medsyn.evaluate.stages` (docs/ARCHITECTURE.md draws the whole flow):

1. real data (`real`): the prepared cache split by patient, the evaluated classes, the member images;
2. synthetic data (`synthetic`): decoded at the real size, labels aligned to the real classes;
3. utility: TRTR, TSTR and real + synthetic classifiers, all tested on real `test` patients; saliency:
   Grad-CAM agreement of the TRTR and TSTR classifiers on real test images, beside a second real seed's;
   segmentation (image + mask sets): U-Nets on real / synthetic / both pairs, Dice on real test patients;
4. features: the backbone (the first-seed TRTR classifier, or `--features` weights) and raw pixels;
5. fidelity (FID with its same-N real baseline, KID, PRDC, per-class FID, intensities) and the synthetic
   set's own diversity;
6. privacy: DCR and nearest-patient concentration, membership inference (distance and density-ratio attacks;
   with `run`, the attack that reads the trained model), re-identification;
7. verdicts (`verdicts`: every rule and threshold), OUT/models, OUT/report.html and OUT/metrics.json.

A stage the data cannot support is recorded as skipped with its reason and its verdict says "not
assessed"; errors in the inputs or the configuration stop the run with one line, before or during training.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medsyn import __version__
from medsyn.evaluate.backbone import TRTR_ORIGIN, SavedModels, external_features
from medsyn.evaluate.privacy_stage import PrivacyOutcome, privacy_stage
from medsyn.evaluate.real import RealData, open_real, open_real_data
from medsyn.evaluate.segmentation_stage import segmentation_stage
from medsyn.evaluate.settings import EvalSettings, resolve_device
from medsyn.evaluate.stages import (
    Features,
    diversity_stage,
    features_stage,
    fidelity_stage,
    saliency_stage,
    utility_stage,
)
from medsyn.evaluate.synthetic import SyntheticInput, SyntheticSet, load_synthetic, open_synthetic
from medsyn.evaluate.verdicts import (
    Verdict,
    concentration_context,
    concentration_verdict,
    dcr_verdict,
    diversity_verdict,
    filtered,
    mia_verdict,
    overall,
    realistic_overall,
    realistic_verdict,
    reid_verdict,
    saliency_verdict,
    segmentation_verdict,
    useful_overall,
    useful_verdict,
)
from medsyn.io import to_jsonable, write_json_atomic
from medsyn.report import ReportAssets, write_report
from medsyn.train.run import read_run_meta

__all__ = ["TRTR_ORIGIN", "EvalSettings", "evaluate", "open_real", "resolve_device"]  # what callers import from here


class Stages:
    """Announces each stage (unless quiet) and records its wall and CPU time (all threads of this process) and
    peak memory, for metrics.json and the benchmark: on a shared machine CPU time is the steadier figure.

    Peak memory: the process's resident-set high-water mark, reset at each stage start through
    /proc/self/clear_refs (Linux; None elsewhere), and on a GPU the peak of allocated device memory."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.timings: dict[str, dict[str, float | None]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]>[/] {name}")
        _reset_peak()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[name] = {"wall_s": round(time.perf_counter() - wall, 3),
                                  "cpu_s": round(time.process_time() - cpu, 3), **_peak()}  # fmt: skip


def _reset_peak() -> None:
    with suppress(OSError):  # not Linux, or not allowed: the peak is then the process's since its start
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak() -> dict[str, float | None]:
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    out: dict[str, float | None] = {"peak_rss_mb": rss}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def evaluate(
    real: str | Path,
    synthetic: str | Path | tuple[Any, ...] | SyntheticInput,
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    feature_weights: str | Path | None = None,
    *,
    size: int | None = None,
    classes: list[str] | None = None,
    cache: str | Path | None = None,
    real_images: bool = True,
    settings: Mapping[str, Any] | None = None,
    quiet: bool = False,
    reader_study: str | Path | None = None,
    run: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate `synthetic` against `real` (a spec or a prepared cache); writes OUT/metrics.json and
    OUT/report.html and returns the metrics.

    `size`: evaluation size (default: the cache's, else the generator's training size, else the synthetic
    images' own). `classes`: evaluate on these real classes only. `cache`: where a spec is prepared.
    `real_images=False` leaves real images out of the report (so it can be shared where the real data
    may not). `settings`: overrides of the quick/full defaults (see `EvalSettings.make`). `reader_study`: a
    `medsyn reader-study` file whose analysis becomes the report's reader-study section. `run`: the generator's
    training run folder, for the model-based membership attack (discriminator score or denoising loss).
    """
    readers = None
    if reader_study is not None:  # read first: a wrong file is an error before hours of evaluation
        from medsyn.readerstudy.analyze import reader_study_section  # the reader study reads evaluate's inputs

        readers = reader_study_section(reader_study)
    if run is not None:
        read_run_meta(run)  # a wrong folder is a one-line error before the evaluation starts
    out = Path(out_dir)
    stage = Stages(quiet)
    s = EvalSettings.make(quick, seed, resolve_device(device), not quiet, settings)
    external = external_features(feature_weights, s.device, not quiet) if feature_weights else None
    opened = open_synthetic(synthetic)
    out.mkdir(parents=True, exist_ok=True)
    with stage("real data"):
        rd = open_real_data(real, opened.train_config, opened.native_size, out=out, size=size, cache=cache,
                            classes=classes, quiet=quiet)  # fmt: skip
    s.utility.uncertainty_policy = str(rd.ds.meta.get("label_policy", "n/a"))
    scratch = out / ".scratch"
    try:
        with stage("synthetic data"):
            syn = load_synthetic(
                opened, rd.classes, rd.ds.size, rd.ds.channels, scratch=scratch, quiet=quiet,
                fit=str(rd.ds.meta.get("fit", "pad")), known=list(rd.ds.classes),
            )  # fmt: skip
        scratch.mkdir(parents=True, exist_ok=True)
        metrics, assets, models = _run(rd, syn, s, external, stage, real_images, scratch, run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with stage("models: save"):
        metrics["models"] = models.save(out / "models")
    metrics["data"]["notes"] = rd.notes + syn.notes
    metrics["settings"]["feature_weights"] = str(feature_weights) if feature_weights else None
    if readers is not None:
        metrics["reader_study"] = readers
    metrics["timings"] = stage.timings  # the report shows every stage but its own
    metrics["report"] = str(out / "report.html")
    with stage("report"):
        write_report(to_jsonable(metrics), assets, out / "report.html")
    metrics = to_jsonable(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _run(
    rd: RealData, syn: SyntheticSet, s: EvalSettings, external: Any, stage: Stages, real_images: bool, scratch: Path,
    run: str | Path | None,
) -> tuple[dict[str, Any], ReportAssets, SavedModels]:
    """The stages in order, then the verdicts; returns metrics, what the report draws, the models to keep."""
    metrics: dict[str, Any] = {
        "medsyn_version": __version__,
        "settings": {"quick": s.quick, "seed": s.seed, "device": s.device, **{
            k: v for k, v in asdict(s).items() if k not in ("quick", "seed", "device")}},
        "data": {"real": rd.describe(), "synthetic": syn.describe(), "classes": rd.classes},
    }  # fmt: skip
    with stage("utility: TRTR, TSTR, real+synthetic classifiers"):
        util = utility_stage(rd, syn, s)
    metrics["utility"] = util.section
    sal = saliency_stage(rd, util.run, s, stage)
    metrics["saliency"] = sal.section
    seg = segmentation_stage(rd, syn, s, stage)
    if seg.section is not None:
        metrics["segmentation"] = seg.section
    feats = features_stage(rd, syn, s, external, util.run, stage, scratch)
    fid = fidelity_stage(rd, syn, feats, s, stage, util.section)
    metrics["fidelity"] = fid.section
    metrics["diversity"], diversity = diversity_stage(feats, s, stage)
    priv = privacy_stage(rd, syn, feats, s, stage, run)
    metrics["privacy"] = priv.section
    _verdicts(metrics, rd, syn, feats, priv)
    train = rd.splits["train"]
    assets = ReportAssets.collect(
        train.images, train.labels, syn.images, syn.labels, rd.classes, priv.dcrs, priv.mias, fid.histogram,
        priv.section["reidentification"], priv.reid_scores, real_images, s.samples_per_class, s.seed,
        utility=util.run, negative=syn.negative_class, diversity=diversity, saliency=sal,
        saliency_rows=s.saliency.grid_rows,
    )  # fmt: skip
    if real_images and seg.grid is not None:
        assets.segmentation = seg.grid
    return metrics, assets, SavedModels(feats.classifier, priv.reid_model, rd.ds)


def _verdicts(metrics: dict[str, Any], rd: RealData, syn: SyntheticSet, feats: Features, priv: PrivacyOutcome) -> None:
    """Every check's verdict into `metrics` (rules in `medsyn.evaluate.verdicts`)."""
    div = metrics["diversity"]
    diversity = None if "skipped" in div else diversity_verdict(div)
    # an image + mask set without labels has no classification utility to judge (segmentation judges it)
    useful = None if metrics["utility"].get("not_applicable") else useful_verdict(metrics["utility"], diversity)
    saliency = saliency_verdict(metrics["saliency"], useful)
    metrics["saliency"]["verdict"] = saliency.to_dict()
    segmentation = segmentation_verdict(metrics["segmentation"]) if "segmentation" in metrics else None
    if segmentation is not None:
        metrics["segmentation"]["verdict"] = segmentation.to_dict()
    fidelity = realistic_verdict(metrics["fidelity"])
    if useful is not None:
        metrics["utility"]["verdict"] = useful.to_dict()
    metrics["fidelity"]["verdict"] = fidelity.to_dict()
    if diversity is not None:
        div["verdict"] = diversity.to_dict()
    screen = (syn.manifest or {}).get("privacy_filter")
    context = concentration_context(diversity, metrics["fidelity"])  # collapse or no resemblance: hubs
    checks: list[Verdict] = []
    for key, entry in priv.section["dcr"].items():
        space = feats.pixel_space.name if key == "pixel" else getattr(feats.space, "name", key)
        if key not in priv.dcrs:
            checks.append(Verdict(f"dcr ({space})", "n/a", entry["skipped"]))
            continue
        res = priv.dcrs[key]
        checks.append(filtered(dcr_verdict(res), screen, pixel=key == "pixel", reid=False))
        concentration = concentration_verdict(res, context)
        if concentration is not None:
            checks.append(filtered(concentration, screen, pixel=key == "pixel", reid=False))
    for key, entry in priv.section["membership_inference"].items():
        if key in priv.mias:
            pixel = key in ("pixel", "density pixel")
            checks.append(filtered(mia_verdict(priv.mias[key]), screen, pixel=pixel, reid=False))
        elif not entry.get("not_applicable"):
            checks.append(Verdict(f"membership inference ({key})", "n/a", entry["skipped"]))
    checks.append(filtered(reid_verdict(priv.section["reidentification"]), screen, pixel=False, reid=True))
    if rd.split_mismatch:
        checks.append(Verdict("training split", "n/a", rd.split_mismatch))
    if not rd.member_info.known:
        checks.append(Verdict("member set", "n/a", rd.member_info.note or "unknown"))
    if screen:
        metrics["privacy"]["filter"] = (
            "the set was made with generate --privacy-filter: checks in the screened space are shown as filtered "
            "and do not decide; the independent checks decide"
        )
    metrics["privacy"]["checks"] = [c.to_dict() for c in checks]
    metrics["verdicts"] = {
        "useful": useful_overall(useful, saliency, segmentation).to_dict(),
        "realistic": realistic_overall(fidelity, diversity).to_dict(),
        "private": overall("Private?", checks).to_dict(),
    }
