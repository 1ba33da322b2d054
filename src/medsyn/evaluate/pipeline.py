"""`medsyn evaluate`: one run that answers Useful? Realistic? Private? for a synthetic set, in one report.

    metrics = evaluate("phantom?n=2000", "synthetic/cgan64", "eval/cgan64", quick=True)

The real set is a prepared cache split by patient (prepared here from a spec when needed, with the split
seed of the generator's own training run when the synthetic folder's manifest names it, so that
"training images" below are the images the generator saw). What each stage compares:

* utility: classifiers trained on real `train` (TRTR), on the synthetic set (TSTR) and on both, early
  stopping on real `val`, all tested on real `test` patients (per-class AUROC, patient-bootstrap CIs).
* features: penultimate layer of the utility stage's first-seed TRTR classifier (trained on real `train`;
  trained here with the same recipe only when the utility stage was skipped), or a local
  TorchXRayVision / Inception weights file.
* fidelity: FID (with the real-vs-real baseline at the same N), KID, PRDC (k=5), per-class FID against
  held-out real images (`val` + `test`): the trained classifier has seen `train`, so its features of
  `train` images are biased; an external backbone compares against `train`. Intensity divergences
  against `train` pixels.
* privacy: DCR of synthetic images to `train` against the held-out (`val` + `test`) baseline, in pixel
  and feature space; membership inference (members `train`, non-members held-out) in pixel space (and
  in an external feature space; not in the trained classifier's, whose own training images are closer
  together whatever the generator did); re-identification: a siamese network trained on `train`
  patients (early stopping on `val`), verified on `test` patients, then asked to link every synthetic
  image to a training patient, with `test` images as the unseen-patient baseline.

A stage that the data cannot support (e.g. re-identification without patients that have two images)
is recorded as skipped with its reason, and the verdict says it was not assessed; errors in the inputs
themselves stop the run before any training.

The trained models are kept for reuse: OUT/models/classifier (that TRTR classifier, `load_classifier`) and
OUT/models/reid (the re-identification network, `load_reid`), listed under "models" in metrics.json.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from medsyn import __version__
from medsyn.data.cache import PreparedDataset, prepare
from medsyn.data.spec import parse_spec
from medsyn.data.splits import select_classes
from medsyn.errors import ConfigError, DataError, MedsynError
from medsyn.evaluate.features import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    PixelFeatures,
    TorchXRayVisionFeatures,
    load_local_weights,
)
from medsyn.evaluate.fidelity import (
    HistogramDivergence,
    compute_fid,
    compute_kid,
    compute_prdc,
    histogram_divergence,
    per_class_fid,
    to_jsonable,
)
from medsyn.evaluate.privacy import (
    DCRResult,
    MIAResult,
    Verdict,
    dcr_verdict,
    distance_to_closest_record,
    membership_inference,
    mia_verdict,
)
from medsyn.evaluate.reid import ReidConfig, ReidModel, match_synthetic, save_reid, train_reid, verification_auroc
from medsyn.evaluate.synthetic import SyntheticInput, SyntheticSet, load_synthetic, open_synthetic
from medsyn.evaluate.utility import (
    ClassifierConfig,
    LabeledImages,
    RowView,
    UtilityConfig,
    UtilityRun,
    coerce_config,
    run_utility,
    train_classifier,
)
from medsyn.io import atomic_dir, write_json_atomic
from medsyn.models.classifiers import Classifier, save_classifier
from medsyn.report import ReportAssets, write_report
from medsyn.report.verdicts import REID_FPR, overall, realistic_verdict, reid_verdict, useful_verdict
from medsyn.train.config import TrainConfig
from medsyn.train.data import cache_dir_for
from medsyn.train.trainer import wants_cuda

DEFAULT_SIZE = 64


@dataclass
class EvalSettings:
    """Everything that decides the numbers; `quick` picks small models and few epochs (CPU-friendly)."""

    quick: bool = False
    seed: int = 0
    device: str = "cpu"
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    reid: ReidConfig = field(default_factory=ReidConfig)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prdc_k: int = 5
    pixel_size: int = 64  # pixel-space privacy checks work on images area-downsampled to at most this
    n_closest: int = 16
    samples_per_class: int = 6

    @classmethod
    def make(
        cls, quick: bool, seed: int, device: str, progress: bool, overrides: Mapping[str, Any] | None = None
    ) -> EvalSettings:
        """Defaults for quick / full mode, then `overrides` ({'classifier': {...}, 'utility': {...},
        'reid': {...}, other fields}); unknown keys are a ConfigError."""
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ConfigError(f"evaluation settings must be a mapping, got {overrides!r}")
        over = dict(overrides or {})

        def section(key: str) -> dict[str, Any]:
            value = over.pop(key, None) or {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"evaluation setting {key!r} must be a mapping, got {value!r}")
            return dict(value)

        clf = ClassifierConfig(
            model="smallcnn" if quick else "densenet121", epochs=4 if quick else 20,
            patience=2 if quick else 5, seed=seed, device=device, progress=progress,
        )  # fmt: skip
        clf = coerce_config(ClassifierConfig, {**asdict(clf), **section("classifier")})
        utility = coerce_config(UtilityConfig, {
            "classifier": clf, "seeds": [seed] if quick else [seed, seed + 1, seed + 2],
            "n_bootstrap": 200 if quick else 1000, "bootstrap_seed": seed, **section("utility"),
        })  # fmt: skip
        reid = ReidConfig(
            encoder="smallcnn" if quick else clf.model, epochs=4 if quick else 20,
            steps_per_epoch=25 if quick else 100, patience=2 if quick else 5, seed=seed, device=device,
            progress=progress,
        )  # fmt: skip
        reid = coerce_config(ReidConfig, {**asdict(reid), **section("reid")})
        known = {f for f in cls.__dataclass_fields__} - {"quick", "seed", "device", "utility", "reid"}
        unknown = sorted(set(over) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s) {unknown}; expected some of {sorted(known)}")
        return coerce_config(cls, {"quick": quick, "seed": seed, "device": device, "utility": utility, "reid": reid, **over})


class _Stages:
    """Announces each stage (unless quiet) and records its wall and CPU time (all threads of this
    process), for metrics.json and the benchmark: on a shared machine CPU time is the steadier figure."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.timings: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]>[/] {name}")
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[name] = {"wall_s": round(time.perf_counter() - wall, 3),
                                  "cpu_s": round(time.process_time() - cpu, 3)}  # fmt: skip


@dataclass
class _Split:
    """One split of the real cache restricted to the evaluated classes."""

    images: RowView
    labels: np.ndarray
    patient_ids: np.ndarray

    def labeled(self, classes: list[str], name: str) -> LabeledImages:
        return LabeledImages(self.images, self.labels, self.patient_ids, classes, name=name)


# ------------------------------------------------------------------------------------------ real data


def _data_key(data: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """What identifies a dataset regardless of how it was written: kind, absolute location, options
    (the phantom's render size excluded: prepare adds it); a cache folder stands for its spec."""
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        data = PreparedDataset(path).spec
    spec = parse_spec(TrainConfig(data=data).resolved().data)
    options = tuple(sorted((k, v) for k, v in spec.options.items() if not (spec.kind == "phantom" and k == "size")))
    return spec.kind, spec.location, options


def open_real(
    real: str, size: int | None, cache: str | Path | None, train_config: Mapping[str, Any] | None,
    default_size: Callable[[], int], out: Path, quiet: bool,
) -> tuple[PreparedDataset, list[str]]:  # fmt: skip
    """The real cache (prepared from a spec when needed) and notes on whether it matches the generator's
    training data (same data, split seed and size), which the privacy checks rely on."""
    tc = dict(train_config or {})
    path = Path(str(real)).expanduser()
    if (path / "meta.json").is_file():
        ds = PreparedDataset(path)
        if size is not None and size != ds.size:
            raise ConfigError(f"--size {size}, but the real cache {path} holds {ds.size} px images; drop --size")
    else:
        size = size or tc.get("size") or default_size()
        split_seed = int(tc.get("split_seed", 0))
        root = cache or tc.get("cache") or out.absolute().parent / ".medsyn-cache"
        cfg = TrainConfig(data=str(real), size=int(size), split_seed=split_seed, cache=str(root)).resolved()
        ds = prepare(cfg.data, int(size), cache_dir_for(cfg, out), seed=split_seed, quiet=quiet)
    notes = []
    if tc.get("data"):
        try:
            same = _data_key(str(tc["data"])) == _data_key(str(ds.path))
        except MedsynError:  # e.g. the generator's cache folder was moved or deleted since training
            notes.append(f"could not check that the generator's training data ({tc['data']}) is this real set")
        else:
            if not same:
                notes.append(
                    f"the generator was trained on {tc['data']}, but the real set is {ds.spec}: the privacy "
                    "checks' 'training images' are not the ones the generator saw"
                )
        seed_used = ds.meta.get("settings", {}).get("seed")
        if seed_used is not None and int(seed_used) != int(tc.get("split_seed", 0)):
            notes.append(
                f"the real cache was split with seed {seed_used}, the generator's training with "
                f"{tc.get('split_seed', 0)}: training and held-out patients differ from the generator's"
            )
        if tc.get("size") and int(tc["size"]) != ds.size:
            notes.append(f"the generator was trained at {tc['size']} px, the evaluation runs at {ds.size} px")
    return ds, notes


def _classes(real: list[str], asked: list[str] | None, trained: list[str] | None) -> tuple[list[str], list[str]]:
    if asked:
        unknown = [c for c in asked if c not in real]
        if unknown:
            raise ConfigError(f"class(es) {', '.join(unknown)} are not in the real set ({', '.join(real)})")
        return list(asked), []
    if trained:
        kept = [c for c in real if c in trained]
        if not kept:
            raise ConfigError(f"the generator was trained on {trained}, none of which is a real class {real}")
        dropped = [c for c in real if c not in kept]
        note = f"evaluated on the generator's training classes; not evaluated: {', '.join(dropped)}"
        return kept, [note] if dropped else []
    return list(real), []


def _members(ds: PreparedDataset, trained: list[str] | None) -> tuple[np.ndarray | None, list[str]]:
    """Which real training images the generator saw (bool over `ds.rows('train')`; None: all) and a note.

    A generator trained with `classes=` never saw training images positive only for other classes (the
    trainer leaves them out); counting them as members would dilute membership inference towards 0.5."""
    if not trained or not set(ds.classes) - set(trained):
        return None, []
    table = ds.index.iloc[ds.rows("train")]
    try:
        kept, _ = select_classes(table, ds.classes, [c for c in ds.classes if c in trained])
    except MedsynError:
        return None, []
    seen = np.isin(table["row"].to_numpy(), kept["row"].to_numpy())
    if seen.all():
        return None, []
    return seen, [
        f"{int((~seen).sum())} real training images are positive only for classes the generator was not trained "
        "on; it never saw them, so the privacy checks leave them out of the training (member) set"
    ]


def _split(ds: PreparedDataset, rows: np.ndarray, cols: list[int]) -> _Split:
    ids = ds.index["patient_id"].to_numpy().astype(str)
    return _Split(RowView(ds.images, rows), ds.labels[rows][:, cols], ids[rows])


# ------------------------------------------------------------------------------------------- stages


def _skipped(exc: MedsynError) -> dict[str, Any]:
    return {"skipped": str(exc)}


def _utility(splits: dict[str, _Split], syn: SyntheticSet, classes: list[str], cfg: UtilityConfig) -> UtilityRun:
    """TRTR / TSTR / augmentation on the classes the test split can score (others noted, not fatal)."""
    test = splits["test"].labels
    keep = [j for j in range(len(classes))
            if min(int((test[:, j] == 1).sum()), int((test[:, j] == 0).sum())) >= cfg.min_test_positives]  # fmt: skip
    if not keep:
        raise DataError(
            f"no class has {cfg.min_test_positives} positive and negative test images; utility needs a larger test split"
        )
    names = [classes[j] for j in keep]
    sub = {k: _Split(s.images, s.labels[:, keep], s.patient_ids) for k, s in splits.items()}
    run = run_utility(
        sub["train"].labeled(names, "real_train"),
        sub["val"].labeled(names, "real_val"),
        sub["test"].labeled(names, "real_test"),
        LabeledImages(syn.images, syn.labels[:, keep], None, names, name="synthetic"),
        cfg,
    )
    dropped = [c for c in classes if c not in names]
    if dropped:
        run.report["notes"] = [
            f"not scored (fewer than {cfg.min_test_positives} positive or negative test images): {', '.join(dropped)}",
            *run.report["notes"],
        ]
    return run


def _external_features(path: str | Path, device: str, progress: bool) -> FeatureExtractor:
    """A local weights file as a feature extractor: its keys tell Inception-v3 (FID) from TorchXRayVision."""
    state, _ = load_local_weights(path, "feature", "pass the path of a local .safetensors/.pt state dict")
    if any(k.startswith("Mixed_") for k in state):
        return InceptionFeatures(path, device=device, progress=progress)
    if any("denseblock" in k for k in state):
        return TorchXRayVisionFeatures(path, device=device, progress=progress)
    raise ConfigError(
        f"{path}: not an Inception-v3 (pytorch-fid) or TorchXRayVision DenseNet121 state dict; "
        "leave --features out to use a classifier trained on the real training split"
    )


@dataclass
class _RealClassifier:
    """The classifier trained on real `train` behind the default feature space and OUT/models/classifier."""

    model: Classifier
    info: dict[str, Any]  # train_classifier's info: history and config
    classes: list[str]
    origin: str  # which model this is, in words

    def features(self) -> ClassifierFeatures:
        cfg, info = self.info["config"], self.info
        label = (
            f"{self.origin}; trained here on the real training split ({info['n_train_images']} images, best epoch "
            f"{info['best_epoch']}, val mean AUROC {info['best_val_mean_auroc']:.3f}, seed {cfg['seed']})"
        )
        size = int(self.model.arch["size"])
        return ClassifierFeatures(self.model, name=f"{cfg['model']}-real-train-{size}px", weights=label,
                                  device=cfg["device"], progress=cfg["progress"])  # fmt: skip

    def describe(self) -> dict[str, Any]:
        keys = ("best_epoch", "best_val_mean_auroc", "stopped_early", "n_train_images")
        return {"model": self.origin, "seed": self.info["config"]["seed"], "classes": self.classes,
                **{k: self.info[k] for k in keys}}  # fmt: skip


TRTR_ORIGIN = "the first-seed TRTR classifier of the utility stage (reused, not retrained)"
SHARE_NOTE = ("trained on real patient images (they may memorise some): share them only where the real data may "
              "be shared")  # fmt: skip


@dataclass
class _Models:
    """The models worth keeping after a run, written to OUT/models by `save`."""

    classifier: _RealClassifier | None
    reid: ReidModel | None
    ds: PreparedDataset

    def save(self, folder: Path) -> dict[str, Any]:
        """Write folder/classifier and folder/reid (whichever exist; the folder is replaced as a whole, so
        no model of an earlier run survives) and return their metrics.json entries."""
        data = {"spec": self.ds.spec, "content_hash": self.ds.meta.get("content_hash"), "size": self.ds.size}
        entries: dict[str, Any] = {"note": SHARE_NOTE}
        with atomic_dir(folder) as tmp:
            if self.classifier is not None:
                c = self.classifier
                what = (f"{c.info['config']['model']} classifier, {c.origin}: trained on the real training split, "
                        f"early stopping on real val; input float (N, {c.model.arch['in_channels']}, "
                        f"{c.model.arch['size']}, {c.model.arch['size']}) in [0, 1], one logit per class")  # fmt: skip
                save_classifier(c.model, tmp / "classifier", extra={
                    "classes": c.classes, "what": what, "data": data,
                    "training": {k: v for k, v in c.info.items() if k != "config"}, "config": c.info["config"],
                })  # fmt: skip
                entries["classifier"] = {"path": str(folder / "classifier"), "what": what, "classes": c.classes,
                                         "load": "medsyn.models.classifiers.load_classifier(path)"}  # fmt: skip
            if self.reid is not None:
                h = self.reid.history
                what = (f"siamese re-identification network ({self.reid.cfg.encoder} encoder, {self.reid.cfg.head} "
                        f"head) trained on {h.get('n_patients')} real training patients; same-patient logit of "
                        "two images; patient ids are not stored")  # fmt: skip
                save_reid(self.reid, tmp / "reid", extra={"what": what, "data": data})
                entries["reid"] = {"path": str(folder / "reid"), "what": what,
                                   "load": "medsyn.evaluate.reid.load_reid(path, device='cpu')"}  # fmt: skip
        return entries


def _domain_classifier(train: LabeledImages, val: LabeledImages, cfg: ClassifierConfig) -> _RealClassifier:
    """Only when the utility stage was skipped: the TRTR recipe (same config and seed) trained on real train."""
    model, info = train_classifier(train.images, train.labels, val.images, val.labels, cfg)
    origin = "a classifier trained with the TRTR recipe (the utility stage was skipped)"
    return _RealClassifier(model, info, list(train.classes or []), origin)


def _fidelity(
    ref: np.ndarray, ref_labels: np.ndarray, ref_ids: np.ndarray, syn_f: np.ndarray, syn: SyntheticSet,
    train_images: RowView, space: FeatureExtractor, s: EvalSettings, stage: _Stages,
) -> tuple[dict[str, Any], HistogramDivergence]:  # fmt: skip
    """FID / KID / PRDC / per-class FID against `ref` (real features; `ref_ids` their patients, so the
    real-vs-real FID baseline splits whole patients) and intensity divergences against training pixels."""
    out: dict[str, Any] = {}
    progress = s.utility.classifier.progress
    with stage("fidelity: FID"):
        out["fid"] = compute_fid(ref, syn_f, space, real_groups=ref_ids, seed=s.seed).to_dict()
    with stage("fidelity: KID"):
        out["kid"] = compute_kid(ref, syn_f, space, n_subsets=s.kid_subsets, subset_size=s.kid_subset_size,
                                 seed=s.seed, device=s.device).to_dict()  # fmt: skip
    with stage("fidelity: PRDC"):
        out["prdc"] = compute_prdc(ref, syn_f, space, k=s.prdc_k, device=s.device, progress=progress).to_dict()
    with stage("fidelity: per-class FID"):
        per_class = per_class_fid(
            ref, ref_labels, syn_f, syn.labels, space, syn.classes, real_groups=ref_ids, seed=s.seed
        )
        out["per_class_fid"] = [c.to_dict() for c in per_class]
    with stage("fidelity: intensity histograms"):
        hist = histogram_divergence(train_images, syn.images)
    out["intensity"] = hist.to_dict()
    out["intensity"]["reference"] = "real training split (pixels)"
    return out, hist


def _reid(splits: dict[str, _Split], syn: SyntheticSet, cfg: ReidConfig, n_bootstrap: int, seed: int) -> dict:
    train, val, test = splits["train"], splits["val"], splits["test"]
    model = train_reid(train.images, train.patient_ids, cfg, val_images=val.images, val_patient_ids=val.patient_ids)
    ver = verification_auroc(model, test.images, test.patient_ids, n_bootstrap=n_bootstrap, seed=seed)
    match = match_synthetic(model, syn.images, train.images, train.patient_ids, ver, heldout_images=test.images)
    arrays = {k: match.pop(k) for k in ("best_patient", "best_train_index", "best_score", "matched")}
    history = {k: v for k, v in model.history.items() if k != "config"}
    return {"training": history, "verification": ver, "matching": match, "_arrays": arrays, "_model": model}


# ------------------------------------------------------------------------------------------- driver


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is a ConfigError."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    return "cuda" if wants_cuda(device) else "cpu"


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
) -> dict[str, Any]:
    """Evaluate `synthetic` against `real` (a spec or a prepared cache); writes OUT/metrics.json and
    OUT/report.html and returns the metrics.

    `size`: evaluation size (default: the cache's, else the generator's training size, else the synthetic
    images' own). `classes`: evaluate on these real classes only. `cache`: where a spec is prepared.
    `real_images=False` leaves real images out of the report (so it can be shared where the real data
    may not). `settings`: overrides of the quick/full defaults (see `EvalSettings.make`).
    """
    out = Path(out_dir)
    stage = _Stages(quiet)
    s = EvalSettings.make(quick, seed, resolve_device(device), not quiet, settings)
    external = _external_features(feature_weights, s.device, not quiet) if feature_weights else None
    opened = open_synthetic(synthetic)
    out.mkdir(parents=True, exist_ok=True)
    with stage("real data"):
        ds, data_notes = open_real(str(real), size, cache, opened.train_config, opened.native_size, out, quiet)
    trained = (opened.train_config or {}).get("classes")
    eval_classes, class_notes = _classes(ds.classes, classes, trained)
    seen, member_notes = _members(ds, trained)
    data_notes += class_notes + member_notes
    s.utility.uncertainty_policy = str(ds.meta.get("label_policy", "n/a"))
    scratch = out / ".scratch"
    try:
        with stage("synthetic data"):
            syn = load_synthetic(
                opened, eval_classes, ds.size, ds.channels, scratch=scratch, quiet=quiet,
                fit=str(ds.meta.get("fit", "pad")), known=list(ds.classes),
            )  # fmt: skip
        metrics, assets, models = _run(ds, syn, eval_classes, s, external, stage, real_images, seen)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with stage("models: save"):
        metrics["models"] = models.save(out / "models")
    metrics["data"]["notes"] = data_notes + syn.notes
    metrics["settings"]["feature_weights"] = str(feature_weights) if feature_weights else None
    metrics["timings"] = stage.timings  # the report shows every stage but its own
    metrics["report"] = str(out / "report.html")
    with stage("report"):
        write_report(to_jsonable(metrics), assets, out / "report.html")
    metrics = to_jsonable(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _run(
    ds: PreparedDataset, syn: SyntheticSet, classes: list[str], s: EvalSettings,
    external: FeatureExtractor | None, stage: _Stages, real_images: bool, seen: np.ndarray | None = None,
) -> tuple[dict[str, Any], ReportAssets, _Models]:  # fmt: skip
    """All three sections. `seen`: the training images the generator saw (see `_members`), the privacy
    checks' members; utility and fidelity use the whole training split."""
    cols = [ds.classes.index(c) for c in classes]
    splits = {name: _split(ds, ds.rows(name), cols) for name in ("train", "val", "test")}
    held_rows = np.concatenate([ds.rows("val"), ds.rows("test")])
    held = _split(ds, held_rows, cols)
    train = splits["train"]
    metrics: dict[str, Any] = {
        "medsyn_version": __version__,
        "settings": {"quick": s.quick, "seed": s.seed, "device": s.device, **{
            k: v for k, v in asdict(s).items() if k not in ("quick", "seed", "device")}},
        "data": _describe_data(ds, syn, classes, splits),
    }  # fmt: skip

    run: UtilityRun | None = None
    real_clf: _RealClassifier | None = None
    with stage("utility: TRTR, TSTR, real+synthetic classifiers"):
        try:
            run = _utility(splits, syn, classes, s.utility)
            metrics["utility"] = run.report
            real_clf = _RealClassifier(run.models["trtr"][0], run.training["trtr"][0], run.classes, TRTR_ORIGIN)
        except MedsynError as exc:
            metrics["utility"] = _skipped(exc)

    space: FeatureExtractor | None = external
    backbone: dict[str, Any] = {"trained_on": "external weights (not this data)"}
    if space is None and real_clf is None:
        with stage("features: domain classifier on real train (TRTR recipe; utility was skipped)"):
            try:
                clf = replace(s.utility.classifier, seed=s.utility.seeds[0])
                real_clf = _domain_classifier(train.labeled(classes, "real_train"),
                                              splits["val"].labeled(classes, "real_val"), clf)  # fmt: skip
            except MedsynError as exc:
                backbone = _skipped(exc)
    if space is None and real_clf is not None:
        space = real_clf.features()
        backbone = {"trained_on": "real training split", "training": real_clf.describe()}
    if space is not None:
        backbone.update(name=space.name, implementation=space.implementation, dim=space.dim)

    feats: dict[str, np.ndarray] = {}
    if space is not None:
        with stage(f"features: {space.name}"):
            feats = {k: space(v) for k, v in (("train", train.images), ("held", held.images), ("syn", syn.images))}
    pixel = PixelFeatures(min(s.pixel_size, ds.size), ds.channels, device=s.device)
    with stage(f"features: {pixel.name}"):
        pix = {k: pixel(v) for k, v in (("train", train.images), ("held", held.images), ("syn", syn.images))}

    hist = None
    if space is None:
        metrics["fidelity"] = {"skipped": f"no feature backbone: {backbone['skipped']}", "backbone": backbone}
    else:
        ref, ref_labels, ref_ids, ref_name = (
            (feats["train"], train.labels, train.patient_ids, "real training split") if external is not None
            else (feats["held"], held.labels, held.patient_ids, "held-out real images (val + test patients)")
        )  # fmt: skip
        try:
            fidelity, hist = _fidelity(ref, ref_labels, ref_ids, feats["syn"], syn, train.images, space, s, stage)
            metrics["fidelity"] = {"backbone": backbone, "reference": ref_name, **fidelity}
        except MedsynError as exc:
            metrics["fidelity"] = {"backbone": backbone, **_skipped(exc)}

    spaces = [("pixel", pix, pixel)] + ([("feature", feats, space)] if space is not None else [])
    members = splits
    if seen is not None:
        spaces = [(key, {**f, "train": f["train"][seen]}, sp) for key, f, sp in spaces]
        members = {**splits, "train": _split(ds, ds.rows("train")[seen], cols)}
    privacy, checks, dcrs, mias, reid_scores, reid_model = _privacy(spaces, members, held, syn, s, stage,
                                                                    external is not None)  # fmt: skip
    metrics["privacy"] = privacy
    utility_check = useful_verdict(metrics["utility"])
    fidelity_check = realistic_verdict(metrics["fidelity"])
    metrics["utility"]["verdict"] = utility_check.to_dict()
    metrics["fidelity"]["verdict"] = fidelity_check.to_dict()
    metrics["verdicts"] = {
        "useful": overall("Useful?", [utility_check]).to_dict(),
        "realistic": overall("Realistic?", [fidelity_check]).to_dict(),
        "private": overall("Private?", checks).to_dict(),
    }
    assets = ReportAssets.collect(
        train.images, train.labels, syn.images, syn.labels, classes, dcrs, mias, hist, privacy["reidentification"],
        reid_scores, real_images, s.samples_per_class, s.seed, utility=run,
    )
    return metrics, assets, _Models(real_clf, reid_model, ds)


def _privacy(
    spaces: list[tuple[str, dict[str, np.ndarray], FeatureExtractor]], splits: dict[str, _Split], held: _Split,
    syn: SyntheticSet, s: EvalSettings, stage: _Stages, external: bool,
) -> tuple[dict[str, Any], list[Verdict], dict[str, DCRResult], dict[str, MIAResult], np.ndarray | None,
           ReidModel | None]:  # fmt: skip
    """DCR per feature space, membership inference (pixel space, and an external feature space), and the
    re-identification attack; returns the JSON section, the verdict per check, the results the report draws,
    the synthetic images' best re-identification scores and the re-identification model."""
    train, progress = splits["train"], s.utility.classifier.progress
    privacy: dict[str, Any] = {"dcr": {}, "membership_inference": {}}
    dcrs: dict[str, DCRResult] = {}
    mias: dict[str, MIAResult] = {}
    checks: list[Verdict] = []
    for key, f, sp in spaces:
        with stage(f"privacy: DCR ({sp.name})"):
            try:
                dcrs[key] = distance_to_closest_record(f["syn"], f["train"], f["held"], sp, n_closest=s.n_closest,
                                                       device=s.device, progress=progress,
                                                       train_patient_ids=train.patient_ids)  # fmt: skip
                privacy["dcr"][key] = dcrs[key].to_dict()
                checks.append(dcr_verdict(dcrs[key]))
            except MedsynError as exc:
                privacy["dcr"][key] = _skipped(exc)
                checks.append(Verdict(f"dcr ({sp.name})", "n/a", str(exc)))
        if key != "pixel" and not external:
            privacy["membership_inference"][key] = {"skipped": (
                "not run in the feature space of a classifier trained on the member images: its own training "
                "images are closer together whatever the generator did, which would fake leakage")}  # fmt: skip
            continue
        with stage(f"privacy: membership inference ({sp.name})"):
            try:
                mias[key] = membership_inference(
                    f["syn"], f["train"], f["held"], sp, member_ids=train.patient_ids,
                    non_member_ids=held.patient_ids, n_bootstrap=max(1, s.utility.n_bootstrap),
                    seed=s.seed, device=s.device, progress=progress,
                )  # fmt: skip
                privacy["membership_inference"][key] = mias[key].to_dict()
                checks.append(mia_verdict(mias[key]))
            except MedsynError as exc:
                privacy["membership_inference"][key] = _skipped(exc)
                checks.append(Verdict(f"membership inference ({sp.name})", "n/a", str(exc)))
    with stage("privacy: re-identification (siamese)"):
        try:
            reid = _reid(splits, syn, s.reid, s.utility.n_bootstrap, s.seed)
        except MedsynError as exc:
            reid = _skipped(exc)
    arrays, model = reid.pop("_arrays", None), reid.pop("_model", None)
    privacy["reidentification"] = reid
    checks.append(reid_verdict(reid))
    privacy["checks"] = [c.to_dict() for c in checks]
    return privacy, checks, dcrs, mias, None if arrays is None else arrays["best_score"], model


def _describe_data(ds: PreparedDataset, syn: SyntheticSet, classes: list[str], splits: dict[str, _Split]) -> dict:
    return {
        "real": {
            "dataset": ds.meta.get("name"),
            "spec": ds.spec,
            "cache": str(ds.path),
            "content_hash": ds.meta.get("content_hash"),
            "size": ds.size,
            "channels": ds.channels,
            "label_policy": ds.meta.get("label_policy", "n/a"),
            "split_seed": ds.meta.get("settings", {}).get("seed"),
            "splits": {
                name: {
                    "images": len(sp.labels),
                    "patients": int(len(np.unique(sp.patient_ids))),
                    "positives": {c: int((sp.labels[:, j] == 1).sum()) for j, c in enumerate(classes)},
                }
                for name, sp in splits.items()
            },
        },
        "synthetic": syn.describe(),
        "classes": classes,
    }


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(question, verdict, key numbers) for a terminal summary."""
    rows = []
    u, f, p = metrics.get("utility", {}), metrics.get("fidelity", {}), metrics.get("privacy", {})
    v = metrics["verdicts"]
    if "trtr" in u:
        r = u["ratio"]["tstr_over_trtr_above_chance"]["value"]
        nums = f"TRTR {u['trtr']['mean_auroc']:.3f}  TSTR {u['tstr']['mean_auroc']:.3f}  above-chance ratio {_fmt(r)}"
    else:
        nums = "not assessed"
    rows.append(("Useful?", v["useful"]["level"], nums))
    if "fid" in f:
        base = f["fid"].get("baseline") or {}
        nums = (f"FID {f['fid']['fid']:.3g} (real-real {_fmt(base.get('real_vs_real'))} at N={base.get('n')})  "
                f"KID {f['kid']['kid']:.3g}  P {f['prdc']['precision']:.2f}  C {f['prdc']['coverage']:.2f}")  # fmt: skip
    else:
        nums = "not assessed"
    rows.append(("Realistic?", v["realistic"]["level"], nums))
    parts = []
    dcr = p.get("dcr", {}).get("pixel", {})
    if "fraction_below_p1" in dcr:
        parts.append(f"DCR<p1 {100 * dcr['fraction_below_p1']:.1f}%")
    mia = p.get("membership_inference", {}).get("pixel", {})
    if "auroc" in mia:
        parts.append(f"MIA AUROC {mia['auroc']:.3f}")
    match = p.get("reidentification", {}).get("matching")
    if match:
        parts.append(f"re-id linked {100 * match['gallery_calibrated'][str(REID_FPR)]['synthetic']['fraction']:.1f}%")
    rows.append(("Private?", v["private"]["level"], "  ".join(parts) or "not assessed"))
    return rows


def _fmt(value: Any) -> str:
    return "?" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3g}"
