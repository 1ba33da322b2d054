"""Utility of synthetic images: does a classifier trained on them work on held-out REAL patients?

    report = utility_report(real_train, real_val, real_test, synthetic, UtilityConfig(seeds=[0, 1, 2]))
    run = run_utility(...)   # the same report as run.report, plus run.models and run.scores (real test logits)

Three settings, all tested on the same held-out real patients with the same bootstrap resamples:
TRTR (train real, test real), TSTR (train synthetic, test real) and augmentation (real + synthetic).
Model selection is always early stopping on the mean AUROC of the REAL validation split (the training
loop is `medsyn.evaluate.classifier`, the statistics `medsyn.evaluate.stats`).

Masked labels (NaN, e.g. CheXpert 'ignore' policy) are left out of the loss and of every metric.
Confidence intervals are percentile bootstraps that resample PATIENTS; differences and ratios between
settings use paired resamples. Several classifier seeds give mean +- std; the interval is then that of
the seed-averaged AUROC (test-set uncertainty), while the std shows training variability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.classifier import ClassifierConfig, predict_logits, train_classifier
from medsyn.evaluate.config import coerce_config
from medsyn.evaluate.data import ConcatView, LabeledImages, RowView, as_labeled, check_labels, check_patient_ids
from medsyn.evaluate.stats import auroc_bootstrap, label_stats, percentile_ci, resampling, summarize
from medsyn.models.classifiers import Classifier

__all__ = [  # the utility API; LabeledImages, RowView, ClassifierConfig, train_classifier and coerce_config are
    # re-exported because callers (benchmark sweeps, benchmarks) import them from here
    "SETTINGS", "ClassifierConfig", "LabeledImages", "RowView", "UtilityConfig", "UtilityRun", "coerce_config",
    "per_class_auroc", "run_utility", "train_classifier", "utility_report",
]  # fmt: skip

SETTINGS = ("trtr", "tstr", "augmented")


@dataclass
class UtilityConfig:
    """Settings of `utility_report`; `uncertainty_policy` is only recorded (the data layer applied it)."""

    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    n_bootstrap: int = 1000
    ci_level: float = 0.95
    bootstrap_seed: int = 0
    min_test_positives: int = 5  # per class, positives and negatives; fewer -> DataError
    uncertainty_policy: str | None = None

    def __post_init__(self) -> None:
        self.classifier = coerce_config(ClassifierConfig, self.classifier)
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"utility.seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.n_bootstrap < 0 or not 0 < self.ci_level < 1 or self.min_test_positives < 1:
            raise ConfigError("utility: n_bootstrap must be >= 0, ci_level in (0, 1), min_test_positives >= 1")


def per_class_auroc(
    model_or_scores: nn.Module | np.ndarray,
    images: Any,
    labels: np.ndarray,
    patient_ids: Any = None,
    *,
    classes: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Per-class AUROC with bootstrap CIs (by patient when ids are given) and the mean over evaluable classes.

    `model_or_scores`: a model (scored on `images`) or precomputed scores (N, K) (then `images` may be None).
    A class whose unmasked test labels are all one value gets NaN and a `reason`.
    """
    if isinstance(model_or_scores, nn.Module):
        scores = predict_logits(model_or_scores, images, batch_size)
    else:
        scores = np.asarray(model_or_scores, dtype=np.float64)
        scores = scores[:, None] if scores.ndim == 1 else scores
    labels = check_labels(labels, len(scores), "test")
    if scores.shape != labels.shape:
        raise DataError(f"scores have shape {scores.shape} but labels {labels.shape}")
    ids = check_patient_ids(patient_ids, len(labels), "test")
    names = [str(c) for c in classes] if classes is not None else [f"class_{c}" for c in range(labels.shape[1])]
    if len(names) != labels.shape[1]:
        raise DataError(f"{len(names)} class names for {labels.shape[1]} label columns")
    point, reps = auroc_bootstrap([scores], labels, ids, n_bootstrap, seed)
    out = summarize(point, reps, names, label_stats(labels, names), ci_level)
    out.update(resampling(ids, labels, n_bootstrap, ci_level))
    return out


def _sparse_bootstrap_notes(trtr: Mapping[str, Any], classes: list[str], n_bootstrap: int, unit: str) -> list[str]:
    """Say where many resamples lacked a class's positives (or negatives): the few that had them decide its
    interval, which is then conditional on them and too narrow (few positive patients, not few images)."""
    notes = []
    for c in classes:
        entry = trtr["classes"][c]
        valid = entry.get("n_bootstrap_valid", n_bootstrap)
        if entry.get("reason") is None and n_bootstrap and valid < 0.95 * n_bootstrap:
            notes.append(
                f"{c}: only {valid} of {n_bootstrap} {unit} resamples held both positive and negative test images "
                f"({entry['n_pos']} positive images): its CI, and the mean's, come from those resamples only and "
                "understate the uncertainty; read them with care"
            )
    return notes


def _check_sets(sets: dict[str, LabeledImages], min_pos: int) -> list[str]:
    """Same classes and image shape everywhere, disjoint patients, enough test positives; returns classes."""
    ref = sets["real_train"]
    k = ref.labels.shape[1]
    named = [(name, d.classes) for name, d in sets.items() if d.classes is not None]
    classes = named[0][1] if named else [f"class_{c}" for c in range(k)]
    for name, data in sets.items():
        if data.labels.shape[1] != k or data.classes not in (None, classes):
            raise DataError(
                f"class set mismatch: expected {classes}, {name} has "
                f"{data.classes or str(data.labels.shape[1]) + ' unnamed classes'}"
            )
        if data.images.shape[1:] != ref.images.shape[1:]:
            raise DataError(f"image shape mismatch: real_train {ref.images.shape[1:]}, {name} {data.images.shape[1:]}")
    real = ["real_train", "real_val", "real_test"]
    for i, a in enumerate(real):
        for b in real[i + 1 :]:
            ia, ib = sets[a].patient_ids, sets[b].patient_ids
            if ia is not None and ib is not None:
                shared = np.intersect1d(ia, ib)
                if len(shared):
                    raise DataError(
                        f"{len(shared)} patient(s) are in both {a} and {b} (e.g. {shared[0]!r}); "
                        "splits must be by patient"
                    )
    few = [
        f"{name} ({s['n_pos']} pos / {s['n_neg']} neg)"
        for name, s in zip(classes, label_stats(sets["real_test"].labels, classes), strict=True)
        if min(s["n_pos"], s["n_neg"]) < min_pos
    ]
    if few:
        raise DataError(
            f"too few test positives/negatives (< {min_pos}) for: {', '.join(few)}; "
            "drop these classes or lower min_test_positives"
        )
    return classes


@dataclass
class UtilityRun:
    """Everything `run_utility` trained and scored; `report` is what `utility_report` returns (JSON).

    `models[setting][r]` was trained with seed `seeds[r]`; `scores[setting]` (n_seeds, n_test, K) are its
    float64 logits on the real test images, in test order; `test_labels` (n_test, K), NaN = masked;
    `training[setting][r]` is `train_classifier`'s full info (per-epoch history, config).
    """

    report: dict[str, Any]
    classes: list[str]
    seeds: list[int]
    models: dict[str, list[Classifier]]
    scores: dict[str, np.ndarray]
    test_labels: np.ndarray
    training: dict[str, list[dict[str, Any]]]


def utility_report(
    real_train: LabeledImages | Sequence[Any],
    real_val: LabeledImages | Sequence[Any],
    real_test: LabeledImages | Sequence[Any],
    synthetic: LabeledImages | Sequence[Any],
    cfg: UtilityConfig | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """TRTR, TSTR and real+synthetic augmentation, each tested on the same held-out real patients.

    Returns per-setting per-class AUROC with CIs, mean AUROC, the synthetic/real ratios
    TSTR/TRTR and (TSTR-0.5)/(TRTR-0.5) (share of above-chance performance kept), the per-class gain
    from augmentation, all with paired bootstrap CIs, plus counts, seeds and the uncertainty policy.
    `run_utility` returns the same report together with the trained models and their test scores.
    """
    return run_utility(real_train, real_val, real_test, synthetic, cfg).report


def run_utility(
    real_train: LabeledImages | Sequence[Any],
    real_val: LabeledImages | Sequence[Any],
    real_test: LabeledImages | Sequence[Any],
    synthetic: LabeledImages | Sequence[Any],
    cfg: UtilityConfig | Mapping[str, Any] | None = None,
) -> UtilityRun:
    """`utility_report`, keeping every trained classifier (3 settings x seeds; on `cfg.classifier.device`)
    and its real-test logits, so callers can reuse a model (e.g. as a feature backbone) or draw ROC curves."""
    cfg = coerce_config(UtilityConfig, cfg)
    sets = {
        name: as_labeled(d, name)
        for name, d in [
            ("real_train", real_train),
            ("real_val", real_val),
            ("real_test", real_test),
            ("synthetic", synthetic),
        ]
    }
    classes = _check_sets(sets, cfg.min_test_positives)
    train_sets = {
        "trtr": (sets["real_train"].images, sets["real_train"].labels),
        "tstr": (sets["synthetic"].images, sets["synthetic"].labels),
        "augmented": (
            ConcatView([sets["real_train"].images, sets["synthetic"].images]),
            np.concatenate([sets["real_train"].labels, sets["synthetic"].labels]),
        ),
    }
    test, val = sets["real_test"], sets["real_val"]
    scores: list[np.ndarray] = []
    models: dict[str, list[Classifier]] = {s: [] for s in SETTINGS}
    infos: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    for setting in SETTINGS:
        images, labels = train_sets[setting]
        for seed in cfg.seeds:
            model, info = train_classifier(images, labels, val.images, val.labels, replace(cfg.classifier, seed=seed))
            scores.append(predict_logits(model, test.images, cfg.classifier.eval_batch_size))
            models[setting].append(model)
            infos[setting].append(info)
    point, reps = auroc_bootstrap(scores, test.labels, test.patient_ids, cfg.n_bootstrap, cfg.bootstrap_seed)
    n_seeds = len(cfg.seeds)
    point = point.reshape(len(SETTINGS), n_seeds, -1)
    reps = reps.reshape(len(reps), len(SETTINGS), n_seeds, -1)
    stats = label_stats(test.labels, classes)
    results = {s: summarize(point[i], reps[:, i], classes, stats, cfg.ci_level) for i, s in enumerate(SETTINGS)}
    for s in SETTINGS:
        results[s]["training"] = [
            {k: info[k] for k in ("best_epoch", "best_val_mean_auroc", "stopped_early")} for info in infos[s]
        ]
    out: dict[str, Any] = {"classes": classes, **results}
    out.update(_comparisons(point, reps, classes, cfg.ci_level))
    out["counts"] = {
        **{f"n_{name}_images": len(d) for name, d in sets.items()},
        **{
            f"n_{name}_patients": None if d.patient_ids is None else len(np.unique(d.patient_ids))
            for name, d in sets.items()
            if name != "synthetic"
        },
        "masked_labels": {
            name: dict(zip(classes, np.isnan(d.labels).sum(0).tolist(), strict=True)) for name, d in sets.items()
        },
    }
    out["seeds"] = cfg.seeds
    out["n_seeds"] = n_seeds
    out["uncertainty_policy"] = cfg.uncertainty_policy or "not stated"
    out["model_selection"] = "early stopping on mean AUROC of the real validation split"
    out["classifier"] = asdict(cfg.classifier)
    out.update(resampling(test.patient_ids, test.labels, cfg.n_bootstrap, cfg.ci_level))
    out["notes"] = _sparse_bootstrap_notes(results["trtr"], classes, cfg.n_bootstrap, out["resample_unit"])
    return UtilityRun(
        report=out,
        classes=classes,
        seeds=list(cfg.seeds),
        models=models,
        scores={s: np.stack(scores[i * n_seeds : (i + 1) * n_seeds]) for i, s in enumerate(SETTINGS)},
        test_labels=test.labels,
        training=infos,
    )


def _comparisons(point: np.ndarray, reps: np.ndarray, classes: list[str], level: float) -> dict[str, Any]:
    """Ratios TSTR/TRTR on mean AUROC and per-class augmentation gain, with paired bootstrap CIs.

    point (3, seeds, K), reps (B, 3, seeds, K); both seed-averaged first.
    """
    p, r = point.mean(axis=1), reps.mean(axis=2)  # (3, K), (B, 3, K)
    ev = [c for c in range(len(classes)) if np.isfinite(p[0, c])]
    trtr, tstr, aug = (p[i, ev].mean() for i in range(3))
    r_trtr, r_tstr = r[:, 0, ev].mean(-1), r[:, 1, ev].mean(-1)

    def ratio(a: Any, b: Any, adjusted: bool) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (a - 0.5) / (b - 0.5) if adjusted else a / b

    chance_ok = trtr > 0.5
    ratios: dict[str, Any] = {}
    for key, adjusted in (("tstr_over_trtr", False), ("tstr_over_trtr_above_chance", True)):
        if adjusted and not chance_ok:
            ratios[key] = {
                "value": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "note": "TRTR mean AUROC <= 0.5: the above-chance ratio is undefined",
            }
            continue
        lo, hi = percentile_ci(ratio(r_tstr, r_trtr, adjusted), level)
        ratios[key] = {"value": float(ratio(tstr, trtr, adjusted)), "ci_low": lo, "ci_high": hi}
    gain, per_class = {}, {}
    for c, name in enumerate(classes):
        lo, hi = percentile_ci(r[:, 2, c] - r[:, 0, c], level)
        gain[name] = {"gain": float(p[2, c] - p[0, c]), "ci_low": lo, "ci_high": hi}
        # a class whose detail the generator loses shows here while the mean hides it (the resolution sweep)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi = percentile_ci(r[:, 1, c] / r[:, 0, c], level)
            per_class[name] = {"value": float(p[1, c] / p[0, c]), "ci_low": lo, "ci_high": hi}
    ratios["per_class"] = per_class
    lo, hi = percentile_ci(r[:, 2, ev].mean(-1) - r_trtr, level)
    return {
        "ratio": ratios,
        "augmentation_gain": {
            "per_class": gain,
            "mean": float(aug - trtr),
            "mean_ci_low": lo,
            "mean_ci_high": hi,
        },
    }
