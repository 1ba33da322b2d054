"""The three benchmark sweeps of Schütte et al. 2021: how much of a real classifier's performance a synthetic
training set keeps as the number of classes grows (`classes`), as the real training set per class grows
(`samples`), and as the image size grows (`resolution`: a finding whose fine detail the generator loses at
higher resolution shows up in its per-class ratio TSTR/TRTR).

At every point: a cache holding that point's training images (validation and test patients are the same
at every point: the split is made once, on the whole data set; a resolution point prepares the same data
set at its size with the same split seed, and the patients' splits are checked to match), a generator
trained on it, a synthetic set
of the same size drawn with the training label distribution, and classifiers trained on real (TRTR), on
synthetic (TSTR) and on both, all tested on the same real test patients. The figure of merit is the
ratio TSTR / TRTR of mean AUROC, with a paired patient-bootstrap CI.

Every point lives in its own folder and is finished once its `result.json` exists; a killed sweep is run
again with the same command and continues: finished points are kept, a half-trained generator resumes
from its last checkpoint (its time budget counts the time already spent).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsyn import __version__
from medsyn.data.cache import PreparedDataset, prepare, subset
from medsyn.data.splits import cap_per_class, select_classes
from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.fidelity import to_jsonable
from medsyn.evaluate.synthetic import load_synthetic
from medsyn.evaluate.utility import LabeledImages, RowView, UtilityConfig, coerce_config, utility_report
from medsyn.generate import generate, is_current
from medsyn.io import write_json_atomic, write_text_atomic
from medsyn.train import TrainConfig, train
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.config import AUGMENTS
from medsyn.train.data import cache_dir_for
from medsyn.train.run import RUN_FILE

SWEEPS = ("classes", "samples", "resolution")
RESOLUTION_POINTS = (32, 64, 128)  # the resolution sweep's default image sizes
CSV_COLUMNS = (
    "point", "classes", "n_classes", "size", "per_class_cap", "real_train_images", "synthetic_images", "test_images",
    "test_patients", "generator_steps", "generator_train_s", "stopped_by", "trtr_auroc", "trtr_ci_low",
    "trtr_ci_high", "tstr_auroc", "tstr_ci_low", "tstr_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
    "ratio_above_chance", "ratio_above_chance_ci_low", "ratio_above_chance_ci_high", "augmented_auroc",
    "augmentation_gain", "point_wall_s",
)  # fmt: skip


@dataclass
class SweepConfig:
    """One sweep. `points`: numbers of classes (classes sweep), training images per class (samples sweep) or
    image sizes in px (resolution sweep, where `size` is unused); None picks 2, 4, ... K classes, 50, 100,
    200, ... up to the largest class, or 32, 64, 128 px."""

    data: str  # dataset spec or a prepared cache folder
    sweep: str = "samples"
    points: list[int] | None = None
    classes: list[str] | None = None  # classes to use (and their order in the classes sweep)
    size: int | None = None  # None: the train config's, else 32
    model: str | None = None  # None: the train config's, else cgan
    augment: str | None = None  # discriminator augmentation (None: the train config's, else none)
    steps: int | None = None  # None: the train config's, else 3000
    budget_s: float | None = None  # generator training time per point (seconds); None: `steps` decide
    width: int | None = None  # None: the train config's, else 32
    batch: int | None = None  # None: the train config's, else 64
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    # a training config (TrainConfig.to_dict, e.g. `medsyn tune`'s best.yaml): every point's generator trains
    # with its hyper-parameters; data, classes, seed, device and the schedule are the sweep's
    train_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._fill_from_train_config()
        if self.sweep not in SWEEPS:
            raise ConfigError(f"--sweep must be one of {', '.join(SWEEPS)}, got {self.sweep!r}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"--augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.points is not None:
            self.points = sorted({int(p) for p in self.points})
            if not self.points or self.points[0] < 1:
                raise ConfigError(f"sweep points must be positive integers, got {self.points}")
        if self.sweep == "resolution":  # every size must suit the model before any point trains
            for size in self.points or RESOLUTION_POINTS:
                self.point_train_config(self.data, size)
        if self.budget_s is not None and not self.budget_s > 0:
            raise ConfigError(f"--budget must be positive, got {self.budget_s}")
        self.utility = coerce_config(UtilityConfig, self.utility)

    def _fill_from_train_config(self) -> None:
        """Settings left None take the train config's value, else the sweep's historical default."""
        tc = None
        if self.train_config is not None:
            tc = TrainConfig.from_dict({**self.train_config, "data": self.train_config.get("data") or self.data})
            self.train_config = {k: v for k, v in tc.to_dict().items() if k not in _POINT_SETTINGS}
        for name, default in _SWEEP_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, getattr(tc, name) if tc is not None else default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def point_train_config(self, data: str, size: int | None = None) -> TrainConfig:
        """The training config of one point: the train config's hyper-parameters, the sweep's data and schedule
        (and the point's image size in a resolution sweep)."""
        steps = int(self.steps or _SWEEP_DEFAULTS["steps"])
        point = {"data": data, "model": self.model, "augment": self.augment, "size": size or self.size, "steps": steps,
                 "batch": self.batch, "width": self.width, "seed": self.seed, "device": self.device,
                 "sample_every": max(500, steps // 4), "ckpt_every": min(500, steps)}  # fmt: skip
        return TrainConfig.from_dict({**(self.train_config or {}), **point})


#: Sweep settings that a train config (--config) may supply, with the sweep's own defaults otherwise.
_SWEEP_DEFAULTS: dict[str, Any] = {"size": 32, "model": "cgan", "augment": "none", "steps": 3000, "width": 32,
                                   "batch": 64}  # fmt: skip
#: Train config keys that each point sets itself (or must not inherit: the point's classes, cache, time limit).
_POINT_SETTINGS = frozenset({*_SWEEP_DEFAULTS, "data", "seed", "device", "classes", "cache", "split_seed",
                             "time_limit_s", "sample_every", "ckpt_every", "log_every", "workers"})  # fmt: skip


@dataclass
class Point:
    """One point of a sweep: its folder name and the cache rows / classes it trains on."""

    value: int
    name: str
    classes: list[str]
    rows: np.ndarray
    size: int | None = None  # a resolution point's image size (other sweeps: the base cache's)


def _base_cache(cfg: SweepConfig, out: Path, quiet: bool) -> PreparedDataset:
    path = Path(cfg.data).expanduser()
    if (path / "meta.json").is_file():
        ds = PreparedDataset(path)
        if ds.size != cfg.size and cfg.sweep != "resolution":  # a resolution point prepares its own size
            raise ConfigError(f"{path} holds {ds.size} px images but the sweep runs at {cfg.size} px; pass --size")
        return ds
    tc = TrainConfig(data=cfg.data, size=cfg.size, split_seed=cfg.split_seed, cache=str(out / "cache"))
    return prepare(cfg.data, cfg.size, cache_dir_for(tc.resolved(), out), seed=cfg.split_seed, quiet=quiet)


def _test_ready(ds: PreparedDataset, classes: list[str], need: int) -> list[str]:
    """Classes with at least `need` positive and negative test images (the rest cannot be scored)."""
    test = ds.labels[ds.rows("test")]
    ok = []
    for c in classes:
        col = test[:, ds.classes.index(c)]
        if min(int((col == 1).sum()), int((col == 0).sum())) >= need:
            ok.append(c)
    return ok


def plan_points(ds: PreparedDataset, cfg: SweepConfig) -> list[Point]:
    """The sweep's points; classes without enough test positives to score are refused up front."""
    classes = list(cfg.classes or ds.classes)
    need = cfg.utility.min_test_positives
    ready = _test_ready(ds, classes, need)
    unscorable = [c for c in classes if c not in ready]
    if cfg.classes and unscorable:
        raise DataError(
            f"class(es) {', '.join(unscorable)} have fewer than {need} positive or negative test images; "
            "leave them out of --classes"
        )
    table = ds.index
    train = table["split"].to_numpy() == "train"
    heldout = table.loc[~train, "row"].to_numpy()

    def with_heldout(kept_train: np.ndarray) -> np.ndarray:
        """Validation and test rows stay whatever the classes: an image positive only for classes a point
        leaves out is a true negative for the ones it keeps (only training rows are selected)."""
        return np.union1d(kept_train[train[kept_train]], heldout)

    positives = {c: int((table.loc[train, c] > 0).sum()) for c in ready}
    order = ready if cfg.classes else sorted(ready, key=lambda c: -positives[c])  # most frequent first
    if cfg.sweep == "classes":
        if len(order) < 2:
            raise DataError(
                f"the classes sweep needs at least 2 classes that the test split can score (>= {need} positive "
                f"and negative test images); {ds.path} has {', '.join(order) or 'none'}"
            )
        values = cfg.points or sorted({*range(2, len(order) + 1, 2), len(order)})
        if values[-1] > len(order):
            raise ConfigError(f"sweep point {values[-1]} classes, but only {len(order)} can be scored: {order}")
        points = []
        for k in values:
            kept, _ = select_classes(table, ds.classes, order[:k])
            points.append(Point(k, f"classes-{k:02d}", order[:k], with_heldout(kept["row"].to_numpy())))
        return points
    if not order:
        raise DataError(f"no class of {ds.path} has {need} positive and negative test images")
    kept, _ = select_classes(table, ds.classes, order) if len(order) < len(ds.classes) else (table, None)
    if cfg.sweep == "resolution":
        rows = with_heldout(kept["row"].to_numpy())
        return [Point(s, f"size-{s:04d}", order, rows, size=s) for s in cfg.points or RESOLUTION_POINTS]
    largest = max(positives[c] for c in order)
    values = cfg.points or [n for n in (50 * 2**i for i in range(20)) if n < largest] + [largest]
    return [
        Point(
            n, f"samples-{n:05d}", order, with_heldout(cap_per_class(kept, order, n, seed=cfg.seed)["row"].to_numpy())
        )
        for n in values
    ]


def resized(base: PreparedDataset, size: int, out: Path, quiet: bool) -> PreparedDataset:
    """`base`'s data set prepared again at `size` px with the same settings (spec, split seed, classes, fit),
    into `out`. The patient split does not depend on the size; that every image keeps its patient and split
    is checked anyway, since the sweep's claim is "same patients at every size"."""
    settings = dict(base.meta.get("settings") or {})
    if not settings.get("spec"):
        raise DataError(f"{base.path}: no preparation settings in meta.json; pass the data set spec to --data")
    settings.pop("size", None)
    ds = prepare(settings.pop("spec"), size, out, quiet=quiet, **settings)
    keys = ["source", "patient_id", "split"]
    if not ds.index[keys].reset_index(drop=True).equals(base.index[keys].reset_index(drop=True)):
        raise DataError(f"{out}: preparing at {size} px gave other images or patient splits than at {base.size} px; "
                        "did the source data change?")  # fmt: skip
    return ds


def _generator_state(run: Path) -> dict[str, Any]:
    ck = load_checkpoint(checkpoint_file(run / "checkpoints"))
    return {"steps": int(ck["step"]), "train_s": float(ck.get("train_seconds", math.nan))}


def _split(ds: PreparedDataset, split: str) -> LabeledImages:
    rows = ds.rows(split)
    ids = ds.index["patient_id"].to_numpy().astype(str)[rows]
    return LabeledImages(RowView(ds.images, rows), ds.labels[rows], ids, ds.classes, name=f"real_{split}")


def run_point(point: Point, base: PreparedDataset, cfg: SweepConfig, folder: Path, quiet: bool) -> dict[str, Any]:
    """Cache -> generator (resumable, within the budget) -> equal-size synthetic set -> TRTR/TSTR/augmented."""
    start = time.perf_counter()
    if point.size is not None and point.size != base.size:  # a resolution point keeping every row needs no copy
        whole = len(point.rows) == len(base) and point.classes == base.classes
        ds = resized(base, point.size, folder / ("cache" if whole else "prepared"), quiet)
        ds = ds if whole else subset(ds, point.rows, point.classes, folder / "cache", quiet=quiet)
    else:
        ds = subset(base, point.rows, point.classes, folder / "cache", quiet=quiet)
    run = folder / "run"
    tc = cfg.point_train_config(str(ds.path), point.size)
    train(tc, run, resume=(run / RUN_FILE).is_file(), quiet=quiet, time_limit_s=cfg.budget_s)
    state = _generator_state(run)
    n_train = len(ds.rows("train"))
    synthetic = folder / "synthetic"
    if not is_current(synthetic, run):  # missing, or drawn before a larger budget trained the run further
        generate(run, n_train, synthetic, seed=cfg.seed, device=cfg.device, quiet=quiet)
    syn = load_synthetic(synthetic, ds.classes, ds.size, ds.channels, quiet=quiet)
    report = utility_report(
        _split(ds, "train"), _split(ds, "val"), _split(ds, "test"),
        LabeledImages(syn.images, syn.labels, None, ds.classes, name="synthetic"), cfg.utility,
    )  # fmt: skip
    write_json_atomic(folder / "utility.json", to_jsonable(report))
    test = ds.index[ds.index["split"] == "test"]
    return {
        "point": point.value,
        "sweep": cfg.sweep,
        "classes": point.classes,
        "size": ds.size,
        "train_counts": {c: int((ds.index.loc[ds.index["split"] == "train", c] > 0).sum()) for c in ds.classes},
        "real_train_images": n_train,
        "synthetic_images": len(syn.images),
        "synthetic_counts": syn.manifest.get("counts") if syn.manifest else None,
        "test_images": len(test),
        "test_patients": int(test["patient_id"].nunique()),
        "generator": {**state, "stopped_by": "steps" if state["steps"] >= cfg.steps else "budget"},
        "utility": {k: report[k] for k in ("trtr", "tstr", "augmented", "ratio", "augmentation_gain")},
        "point_wall_s": round(time.perf_counter() - start, 1),
    }


def _row(r: dict[str, Any]) -> dict[str, Any]:
    u = r["utility"]
    ratio, adj = u["ratio"]["tstr_over_trtr"], u["ratio"]["tstr_over_trtr_above_chance"]
    return {
        "point": r["point"], "classes": ";".join(r["classes"]), "n_classes": len(r["classes"]), "size": r.get("size", ""),
        "per_class_cap": r["point"] if r["sweep"] == "samples" else "", "real_train_images": r["real_train_images"],
        "synthetic_images": r["synthetic_images"], "test_images": r["test_images"],
        "test_patients": r["test_patients"], "generator_steps": r["generator"]["steps"],
        "generator_train_s": r["generator"]["train_s"] and round(r["generator"]["train_s"], 1), "stopped_by": r["generator"]["stopped_by"],
        "trtr_auroc": u["trtr"]["mean_auroc"], "trtr_ci_low": u["trtr"]["mean_ci_low"],
        "trtr_ci_high": u["trtr"]["mean_ci_high"], "tstr_auroc": u["tstr"]["mean_auroc"],
        "tstr_ci_low": u["tstr"]["mean_ci_low"], "tstr_ci_high": u["tstr"]["mean_ci_high"],
        "ratio": ratio["value"], "ratio_ci_low": ratio["ci_low"], "ratio_ci_high": ratio["ci_high"],
        "ratio_above_chance": adj["value"], "ratio_above_chance_ci_low": adj["ci_low"],
        "ratio_above_chance_ci_high": adj["ci_high"], "augmented_auroc": u["augmented"]["mean_auroc"],
        "augmentation_gain": u["augmentation_gain"]["mean"], "point_wall_s": r["point_wall_s"],
    }  # fmt: skip


PER_CLASS_COLUMNS = ("point", "size", "class", "train_positives", "trtr_auroc", "tstr_auroc", "ratio", "ratio_ci_low",
                     "ratio_ci_high")  # fmt: skip


def write_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    """`rows` as CSV with `columns`, floats to 4 decimals, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def _per_class_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class of a point: its AUROCs and TSTR/TRTR with the paired bootstrap CI."""
    u = r["utility"]
    return [{"point": r["point"], "size": r.get("size", ""), "class": c, "train_positives": r["train_counts"].get(c),
             "trtr_auroc": u["trtr"]["classes"][c]["auroc"], "tstr_auroc": u["tstr"]["classes"][c]["auroc"],
             "ratio": ratio["value"], "ratio_ci_low": ratio["ci_low"], "ratio_ci_high": ratio["ci_high"]}
            for c, ratio in (u["ratio"].get("per_class") or {}).items()]  # fmt: skip


def write_per_class_csv(results: Sequence[dict[str, Any]], path: Path) -> None:
    write_rows([row for r in results for row in _per_class_rows(r)], PER_CLASS_COLUMNS, path)


def write_csv(results: Sequence[dict[str, Any]], path: Path) -> None:
    write_rows([_row(r) for r in results], CSV_COLUMNS, path)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a sweep's numbers: the time budget may grow on a rerun, and where it runs
    (device) or whether it shows progress does not change the points already finished."""
    before = {"augment": "none", "train_config": None}  # sweeps stored before --augment / --config
    out = {**before, **{k: v for k, v in config.items() if k not in ("budget_s", "device")}}
    clf = {k: v for k, v in out["utility"]["classifier"].items() if k not in ("device", "progress")}
    out["utility"] = {**out["utility"], "classifier": clf}
    return out


def run_sweep(cfg: SweepConfig, out: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) a sweep into `out`: points/*/result.json, results.csv, sweep.png, report.html and
    sweep.json. Returns the sweep.json content."""
    from medsyn.benchmark.report import write_sweep_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "config.json"
    if stored.is_file():
        try:
            previous = _comparable(json.loads(stored.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{stored}: unreadable sweep settings ({exc}); use another --out") from None
        now = _comparable(cfg.to_dict())
        changed = sorted(k for k in previous.keys() | now.keys() if previous.get(k) != now.get(k))
        if changed:
            raise ConfigError(f"{out} holds a sweep with other settings ({', '.join(changed)}); use another --out")
    write_json_atomic(stored, to_jsonable(cfg.to_dict()))
    base = _base_cache(cfg, out, quiet)
    points = plan_points(base, cfg)
    results = []
    for i, point in enumerate(points, 1):
        folder = out / "points" / point.name
        done = folder / "result.json"
        if not quiet:
            print(f"[{i}/{len(points)}] {point.name}: {len(point.classes)} classes, {len(point.rows)} images")
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(done, to_jsonable(run_point(point, base, cfg, folder, quiet)))  # NaN -> null
        results.append(json.loads(done.read_text()))
    write_csv(results, out / "results.csv")
    write_per_class_csv(results, out / "per_class.csv")
    summary = {
        "medsyn_version": __version__,
        "config": cfg.to_dict(),
        "data": {
            "spec": base.spec,
            "cache": str(base.path),
            "content_hash": base.meta.get("content_hash"),
            "classes": base.classes,
            "counts": base.meta.get("counts"),
        },  # fmt: skip
        "points": results,
    }
    write_json_atomic(out / "sweep.json", to_jsonable(summary))
    write_sweep_report(summary, out)
    return summary
