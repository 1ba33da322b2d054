"""The evaluation's stages, each a function from typed inputs to a typed outcome (see `pipeline.evaluate`).

    utility -> saliency -> features -> fidelity, diversity -> privacy (`privacy_stage.py`)

A stage whose data cannot support it (too few test positives, no patient with two images, ...) raises
`DataError` inside; the stage records it as skipped with that reason and the verdict says "not assessed".
Configuration errors (`ConfigError`, `CheckpointError`) are not caught: they stop the run with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from medsyn.errors import DataError
from medsyn.evaluate.backbone import TRTR_ORIGIN, RealClassifier, domain_classifier
from medsyn.evaluate.classifier import predict_logits, train_classifier
from medsyn.evaluate.data import LabeledImages
from medsyn.evaluate.diversity import DiversityResult, self_diversity
from medsyn.evaluate.features import FeatureExtractor, PixelFeatures
from medsyn.evaluate.fidelity import compute_fid, compute_kid, compute_prdc, per_class_fid
from medsyn.evaluate.intensity import HistogramDivergence, histogram_divergence
from medsyn.evaluate.real import RealData, Split
from medsyn.evaluate.saliency import (
    SaliencyResult,
    agreement,
    baseline_comparison,
    explained_class,
    explained_groups,
    gradcam_maps,
    seed_average,
)
from medsyn.evaluate.settings import EvalSettings
from medsyn.evaluate.synthetic import SyntheticSet
from medsyn.evaluate.utility import UtilityRun, run_utility
from medsyn.evaluate.verdicts import NO_RESEMBLANCE, backbone_problem

Stage = Callable[[str], AbstractContextManager[None]]
"""Times one named step: `with stage("fidelity: FID"): ...`."""

SETS = ("train", "held", "syn")


def skipped(exc: DataError) -> dict[str, Any]:
    return {"skipped": str(exc)}


# ----------------------------------------------------------------------------------------------- utility


@dataclass
class UtilityOutcome:
    section: dict[str, Any]  # metrics.json "utility"
    run: UtilityRun | None  # the trained models and their test scores (None when skipped)


ONE_SIDED = ("a classifier trained on the synthetic set cannot learn a class it holds no examples (or no "
             "negatives) of; a --balance set writes only the top-up of each label group, so it lacks the largest "
             "group: for TSTR draw the training distribution (generate without a count, or --n) or --per-class")


def utility_stage(real: RealData, syn: SyntheticSet, s: EvalSettings) -> UtilityOutcome:
    """TRTR / TSTR / augmentation on the classes the test split and the synthetic set can score (enough positives
    and negatives in both; the others noted, not fatal)."""
    cfg, classes = s.utility, real.classes
    if not classes:
        return UtilityOutcome({"not_applicable": True, "skipped": "the set has no labels (an image + mask set): there "
                                                                  "is no classification to compare"}, None)  # fmt: skip

    def both(labels: np.ndarray, j: int) -> bool:  # enough positives and negatives of class j
        return min(int((labels[:, j] == 1).sum()), int((labels[:, j] == 0).sum())) >= cfg.min_test_positives

    testable = [j for j in range(len(classes)) if both(real.splits["test"].labels, j)]
    if not testable:
        return UtilityOutcome({"skipped": f"no class has {cfg.min_test_positives} positive and negative test images; "
                                          "utility needs a larger test split"}, None)  # fmt: skip
    keep = [j for j in testable if both(syn.labels, j)]  # a class the synthetic set lacks cannot be learned from it
    one_sided = [classes[j] for j in testable if j not in keep]
    if not keep:
        return UtilityOutcome({"skipped": f"no scorable class has {cfg.min_test_positives} positive and negative "
                                          f"synthetic images ({', '.join(one_sided)}): {ONE_SIDED}"}, None)  # fmt: skip
    names = [classes[j] for j in keep]
    sub = {k: Split(sp.images, sp.labels[:, keep], sp.patient_ids) for k, sp in real.splits.items()}
    try:
        run = run_utility(
            sub["train"].labeled(names, "real_train"), sub["val"].labeled(names, "real_val"),
            sub["test"].labeled(names, "real_test"),
            LabeledImages(syn.images, syn.labels[:, keep], None, names, name="synthetic"), cfg,
        )  # fmt: skip
    except DataError as exc:
        return UtilityOutcome(skipped(exc), None)
    dropped = [classes[j] for j in range(len(classes)) if j not in testable]
    run.report["notes"] = [
        *([f"not scored (fewer than {cfg.min_test_positives} positive or negative test images): {', '.join(dropped)}"]
          if dropped else []),
        *([f"not scored (fewer than {cfg.min_test_positives} positive or negative synthetic images): "
           f"{', '.join(one_sided)}; {ONE_SIDED}"] if one_sided else []),
        *run.report["notes"],
    ]  # fmt: skip
    return UtilityOutcome(run.report, run)


# ---------------------------------------------------------------------------------------------- saliency


@dataclass
class SaliencyOutcome:
    section: dict[str, Any]  # metrics.json "saliency"
    synthetic: SaliencyResult | None = None  # reference (first-seed TRTR) maps vs the first-seed TSTR model's
    baseline: SaliencyResult | None = None  # the same reference maps vs a second real-trained seed's
    images: np.ndarray | None = None  # the explained real test images, in the results' order


def saliency_stage(real: RealData, run: UtilityRun | None, s: EvalSettings, stage: Stage) -> SaliencyOutcome:
    """Grad-CAM maps of the first-seed TRTR classifier (the reference) and of every TSTR seed on the same
    random real test images, beside a real-vs-real baseline: the other TRTR seeds when the utility stage trained
    several, else one trained here with the same recipe (the only extra training this stage does). Several
    seeds on a side are averaged per image (`seed_average`): one seed's maps vary."""
    cfg = s.saliency
    if cfg.images == 0:
        return SaliencyOutcome({"skipped": "switched off (saliency: {images: 0})"})
    if run is None:
        return SaliencyOutcome({"skipped": "the utility stage was skipped: there are no real- and synthetic-trained "
                                           "classifiers to compare"})  # fmt: skip
    cols = [real.classes.index(c) for c in run.classes]
    test = real.splits["test"]
    rows = np.sort(np.random.default_rng(s.seed).choice(len(test.labels), min(cfg.images, len(test.labels)),
                                                         replace=False))  # fmt: skip
    images, labels = np.asarray(test.images[rows]), run.test_labels[rows]
    reference, synthetic = run.models["trtr"][0], run.models["tstr"]
    seeds = ", ".join(str(x) for x in run.seeds)
    names = {"reference": f"TRTR seed {run.seeds[0]}", "synthetic": f"TSTR seed{'s' * (len(synthetic) > 1)} {seeds}"}
    try:
        if len(run.models["trtr"]) > 1:
            second = run.models["trtr"][1:]
            names["baseline"] = f"TRTR seed{'s' * (len(second) > 1)} {', '.join(str(x) for x in run.seeds[1:])}, " \
                                "from the utility stage"  # fmt: skip
        else:
            seed = max(run.seeds) + 1
            with stage(f"saliency: second real-trained classifier (seed {seed})"):
                train, val = real.splits["train"], real.splits["val"]
                second = [train_classifier(train.images, train.labels[:, cols], val.images, val.labels[:, cols],
                                           replace(s.utility.classifier, seed=seed))[0]]  # fmt: skip
            names["baseline"] = f"real-trained seed {seed}, trained for this check with the TRTR recipe"
        models = [reference, *synthetic, *second]
        with stage(f"saliency: Grad-CAM maps ({len(rows)} real test images, {len(models)} models)"):
            batch = cfg.batch_size
            targets = explained_class(labels, predict_logits(reference, images, batch))
            maps = [gradcam_maps(m, images, targets, batch_size=batch) for m in models]
    except DataError as exc:
        return SaliencyOutcome(skipped(exc))
    groups = explained_groups(labels, targets, run.classes)
    each = [agreement(maps[0], m, targets, groups, run.classes, cfg.top_fraction) for m in maps[1:]]
    syn_each, base_each = each[: len(synthetic)], each[len(synthetic) :]
    section = {"models": names, "model_seeds": {"synthetic": len(syn_each), "baseline": len(base_each)},
               "seed_average": "per-image agreement averaged over the seeds of each side when there are several",
               "layer": "the last ReLU, i.e. the last feature map before the global pool",
               "explained_class": "each image's first positive class; the reference model's top class when none",
               "groups": "images grouped by the class explained; images without a positive label apart",
               **baseline_comparison(seed_average(syn_each), seed_average(base_each))}  # fmt: skip
    syn_res, base_res = syn_each[0], base_each[0]  # the grid shows one model of each side, with its own numbers
    return SaliencyOutcome(section, syn_res, base_res, images)


# ---------------------------------------------------------------------------------------------- features


@dataclass
class Features:
    """Features of the real training, held-out and synthetic images in the backbone's space and in pixels."""

    space: FeatureExtractor | None  # None: no backbone (then `learned` is empty)
    backbone: dict[str, Any]  # metrics.json "fidelity.backbone"
    learned: dict[str, np.ndarray]  # SETS -> (N, D) float32
    pixel_space: PixelFeatures
    pixel: dict[str, np.ndarray]
    classifier: RealClassifier | None  # the real-trained classifier behind `space`, kept in OUT/models


def _extract(space: FeatureExtractor, images: dict[str, Any], scratch: Path | None) -> dict[str, np.ndarray]:
    """float32 features per set, in a memory-mapped file under `scratch` when given (112k x 4096 pixel
    features are 1.8 GB): the float32 networks' output loses nothing by being stored as float32."""
    out = {}
    for key, imgs in images.items():
        shape = (len(imgs), space.dim)
        dest = (np.empty(shape, np.float32) if scratch is None else
                open_memmap(scratch / f"features-{space.name}-{key}.npy", mode="w+", dtype=np.float32, shape=shape))  # fmt: skip
        out[key] = space(imgs, out=dest)
    return out


def features_stage(
    real: RealData, syn: SyntheticSet, s: EvalSettings, external: FeatureExtractor | None, run: UtilityRun | None,
    stage: Stage, scratch: Path | None = None,
) -> Features:  # fmt: skip
    """The backbone (external weights, else the first-seed TRTR classifier, else one trained with its recipe)."""
    train, val = real.splits["train"], real.splits["val"]
    images = {"train": train.images, "held": real.held.images, "syn": syn.images}
    space: FeatureExtractor | None = external
    backbone: dict[str, Any] = {"trained_on": "external weights (not this data)"}
    clf = None if run is None else RealClassifier(run.models["trtr"][0], run.training["trtr"][0], run.classes,
                                                 TRTR_ORIGIN)  # fmt: skip
    if space is None and clf is None:
        with stage("features: domain classifier on real train (TRTR recipe; utility was skipped)"):
            try:
                cfg = replace(s.utility.classifier, seed=s.utility.seeds[0])
                clf = domain_classifier(train.labeled(real.classes, "real_train"),
                                        val.labeled(real.classes, "real_val"), cfg)  # fmt: skip
            except DataError as exc:
                backbone = skipped(exc)
    if space is None and clf is not None:
        space = clf.features()
        backbone = {"trained_on": "real training split", "training": clf.describe()}
    learned: dict[str, np.ndarray] = {}
    if space is not None:
        backbone.update(name=space.name, implementation=space.implementation, dim=space.dim)
        with stage(f"features: {space.name}"):
            learned = _extract(space, images, scratch)
    pixel = PixelFeatures(min(s.pixel_size, real.ds.size), real.ds.channels, device=s.device)
    with stage(f"features: {pixel.name}"):
        pix = _extract(pixel, images, scratch)
    return Features(space, backbone, learned, pixel, pix, clf)


# ----------------------------------------------------------------------------------- fidelity, diversity


@dataclass
class FidelityOutcome:
    section: dict[str, Any]  # metrics.json "fidelity"
    histogram: HistogramDivergence | None = None


def fidelity_stage(
    real: RealData, syn: SyntheticSet, f: Features, s: EvalSettings, stage: Stage, utility: dict[str, Any]
) -> FidelityOutcome:
    """FID / KID / PRDC / per-class FID against held-out real images (the real-trained classifier has seen
    `train`, so its features of `train` are biased; an external backbone compares against `train`), and
    intensity divergences against training pixels."""
    if f.space is None:
        return FidelityOutcome({"skipped": f"no feature backbone: {f.backbone['skipped']}", "backbone": f.backbone})
    external = f.backbone.get("trained_on") != "real training split"
    ref, ref_split, ref_name = ((f.learned["train"], real.splits["train"], "real training split") if external else
                                (f.learned["held"], real.held, "held-out real images (val + test patients)"))  # fmt: skip
    syn_f, progress = f.learned["syn"], s.utility.classifier.progress
    out: dict[str, Any] = {"backbone": f.backbone, "reference": ref_name}
    try:
        with stage("fidelity: FID"):
            out["fid"] = compute_fid(ref, syn_f, f.space, real_groups=ref_split.patient_ids, seed=s.seed).to_dict()
        with stage("fidelity: KID"):
            out["kid"] = compute_kid(ref, syn_f, f.space, n_subsets=s.kid_subsets, subset_size=s.kid_subset_size,
                                     seed=s.seed, device=s.device).to_dict()  # fmt: skip
        with stage("fidelity: PRDC"):
            out["prdc"] = compute_prdc(ref, syn_f, f.space, k=s.prdc_k, device=s.device, progress=progress,
                                       same_n=True, seed=s.seed).to_dict()
        with stage("fidelity: per-class FID"):
            per_class = per_class_fid(ref, ref_split.labels, syn_f, syn.labels, f.space, syn.classes,
                                      real_groups=ref_split.patient_ids, seed=s.seed)  # fmt: skip
            out["per_class_fid"] = [c.to_dict() for c in per_class]
        with stage("fidelity: intensity histograms"):
            hist = histogram_divergence(real.splits["train"].images, syn.images)
    except DataError as exc:
        return FidelityOutcome({"backbone": f.backbone, **skipped(exc)})
    out["intensity"] = {**hist.to_dict(), "reference": "real training split (pixels)"}
    base = out["fid"].get("baseline") or {}
    problem = backbone_problem(f.backbone, utility, base.get("n") or min(len(ref), len(syn_f)))  # the compared N
    if problem:
        out["not_assessable"] = problem
    if out["prdc"]["precision"] == 0 and out["prdc"]["coverage"] == 0:
        out["warning"] = NO_RESEMBLANCE
    return FidelityOutcome(out, hist)


def diversity_stage(f: Features, s: EvalSettings, stage: Stage) -> tuple[dict[str, Any], DiversityResult | None]:
    """Synthetic self-diversity against real training images at the same N, in pixel space (backbone-free)."""
    with stage(f"diversity ({f.pixel_space.name})"):
        try:
            res = self_diversity(f.pixel["syn"], f.pixel["train"], f.pixel_space, seed=s.seed)
        except DataError as exc:
            return skipped(exc), None
    return res.to_dict(), res
