"""Utility of synthetic images: does a classifier trained on them work on held-out REAL patients?

    report = utility_report(real_train, real_val, real_test, synthetic, UtilityConfig(seeds=[0, 1, 2]))
    run = run_utility(...)   # the same report as run.report, plus run.models and run.scores (real test logits)

Three settings, all tested on the same held-out real patients with the same bootstrap resamples:
TRTR (train real, test real), TSTR (train synthetic, test real) and augmentation (real + synthetic).
Model selection is always early stopping on the mean AUROC of the REAL validation split.

Masked labels (NaN, e.g. CheXpert 'ignore' policy) are left out of the loss and of every metric.
Confidence intervals are percentile bootstraps that resample PATIENTS (images of one patient are
correlated, so resampling images would make the intervals too narrow); differences and ratios between
settings use paired resamples. Several classifier seeds give mean +- std; the interval is then that of
the seed-averaged AUROC (test-set uncertainty), while the std shows training variability.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.sparse import coo_matrix
from torch import nn

from medsyn.errors import ConfigError, DataError
from medsyn.models.classifiers import Classifier, build_classifier
from medsyn.seed import seed_everything

SETTINGS = ("trtr", "tstr", "augmented")

C = TypeVar("C")


def coerce_config(cls: type[C], value: C | Mapping[str, Any] | None) -> C:
    """`value` as a `cls` dataclass: None -> defaults; a mapping (YAML) -> unknown keys are an error."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{cls.__name__} must be a mapping or {cls.__name__}, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; expected some of {sorted(known)}")
    hints = get_type_hints(cls)
    return cls(**{k: _typed(f"{cls.__name__}.{k}", v, hints[k]) for k, v in value.items()})


def _typed(name: str, value: Any, tp: Any) -> Any:
    """`value` checked against the field type `tp` (YAML gives strings where a user quoted a number): a
    one-line ConfigError instead of a TypeError deep inside training. Whole floats count as integers."""
    args = get_args(tp)
    if type(None) in args:  # X | None
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if is_dataclass(tp):
        return coerce_config(tp, value)  # type: ignore[arg-type]
    if get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_typed(f"{name}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value)]
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))  # true is not 1 here
    if tp is int and number and float(value).is_integer():
        return int(value)
    if tp is float and number:
        return float(value)
    if tp in (int, float, bool, str) and (tp in (int, float) or not isinstance(value, tp)):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


def _check_positive(owner: str, **values: float) -> None:
    for key, v in values.items():
        if not v > 0:
            raise ConfigError(f"{owner}.{key} must be positive, got {v!r}")


@dataclass
class ClassifierConfig:
    """Training settings of one utility classifier."""

    model: str = "smallcnn"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 5  # epochs without a better mean val AUROC before stopping
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 256
    progress: bool = False

    def __post_init__(self) -> None:
        _check_positive(
            "classifier",
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            eval_batch_size=self.eval_batch_size,
        )
        if self.batch_size < 2:
            raise ConfigError(f"classifier.batch_size must be >= 2 (batch norm), got {self.batch_size}")


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


# --------------------------------------------------------------------------------------------- data


class RowView:
    """Rows `rows` of an image array, read on demand: a prepared split of a memmap is never copied whole."""

    def __init__(self, array: Any, rows: np.ndarray) -> None:
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[self.rows[idx]])


class ConcatView:
    """Several image arrays seen as one (real + synthetic for augmentation) without concatenating them."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        # uint8 and float parts together are read as float32 in [0, 1] (uint8 parts divided by 255).
        self.dtype = np.dtype(np.uint8) if all(p.dtype == np.uint8 for p in self.parts) else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            part_images = np.asarray(self.parts[p][idx[sel] - self.offsets[p]])
            scale = part_images.dtype == np.uint8 and self.dtype != np.uint8
            out[sel] = part_images / np.float32(255) if scale else part_images
        return out


def check_images(images: Any, name: str = "images") -> Any:
    """Validate (N, C, S, S); torch tensors become numpy, arrays/memmaps/views pass through."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[0] == 0:
        raise DataError(f"{name} must be a non-empty array of shape (N, C, S, S), got shape {shape}")
    return images


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or len(labels) != n:
        raise DataError(f"{name} labels must have shape ({n}, K), got {labels.shape}")
    bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
    if bad.any():
        raise DataError(f"{name} labels must be 0, 1 or NaN (masked), found {labels[bad][0]!r}")
    return labels


def check_patient_ids(patient_ids: Any, n: int, name: str) -> np.ndarray | None:
    if patient_ids is None:
        return None
    ids = np.asarray(patient_ids).astype(str)
    if ids.shape != (n,):
        raise DataError(f"{name} patient ids must have shape ({n},), got {ids.shape}")
    return ids


@dataclass
class LabeledImages:
    """Images (N, C, S, S) uint8 or float in [0, 1], labels (N, K) 0/1/NaN, optional patient ids."""

    images: Any
    labels: np.ndarray
    patient_ids: np.ndarray | None = None
    classes: list[str] | None = None
    name: str = "data"

    def __post_init__(self) -> None:
        self.images = check_images(self.images, f"{self.name} images")
        self.labels = _check_labels(self.labels, len(self.images), self.name)
        self.patient_ids = check_patient_ids(self.patient_ids, len(self.images), self.name)
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if len(self.classes) != self.labels.shape[1]:
                raise DataError(
                    f"{self.name}: {len(self.classes)} class names for {self.labels.shape[1]} label columns"
                )

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_prepared(cls, ds: Any, split: str) -> LabeledImages:
        """One split of a `medsyn.data.cache.PreparedDataset`, images read lazily from its memmap."""
        rows = np.asarray(ds.rows(split), dtype=np.int64)
        if len(rows) == 0:
            raise DataError(f"prepared dataset has no images in split {split!r}")
        table = ds.index.set_index("row") if "row" in ds.index else ds.index
        return cls(
            RowView(ds.images, rows),
            np.asarray(ds.labels)[rows],
            table.loc[rows, "patient_id"].to_numpy(),
            list(ds.classes),
            name=split,
        )


def as_labeled(data: LabeledImages | Sequence[Any], name: str) -> LabeledImages:
    """Accept a LabeledImages or a tuple (images, labels[, patient_ids[, classes]])."""
    if isinstance(data, LabeledImages):
        return data
    if not isinstance(data, Sequence) or not 2 <= len(data) <= 4:
        raise DataError(f"{name} must be LabeledImages or a tuple (images, labels[, patient_ids[, classes]])")
    return LabeledImages(*data, name=name)


def as_unit_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 -> float in [0, 1]; float must already lie in [0, 1] ([-1, 1] generator output is an error)."""
    if batch.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)
    if not np.issubdtype(batch.dtype, np.floating):
        raise DataError(f"images must be uint8 or float in [0, 1], got dtype {batch.dtype}")
    lo, hi = float(batch.min()), float(batch.max())
    if lo < -1e-3 or hi > 1 + 1e-3 or math.isnan(lo + hi):
        raise DataError(
            f"float images must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]; "
            "convert [-1, 1] images with (x + 1) / 2"
        )
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


def batches(n: int, size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    idx = np.arange(n) if order is None else order
    for start in range(0, n, size):
        yield idx[start : start + size]


def light_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation (+-5 deg), scale (+-5%), shift (+-4%), brightness/contrast (+-10%).

    No flips: left/right is anatomical in chest radiographs (heart side), so a flip makes a wrong image.
    """
    n = x.shape[0]
    r = torch.rand(n, 6, generator=gen) * 2 - 1
    angle, scale = r[:, 0] * math.radians(5), 1 + 0.05 * r[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 0.08 * r[:, 2]], 1), torch.stack([sin, cos, 0.08 * r[:, 3]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast, brightness = (1 + 0.1 * r[:, 4]).to(x), (0.1 * r[:, 5]).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]).clamp_(0, 1)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean BCE over the non-NaN labels only, and how many there were (0 -> the loss is a constant 0)."""
    mask = ~torch.isnan(labels)
    target = torch.where(mask, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    n = int(mask.sum())
    return (loss * mask).sum() / max(n, 1), n


def progress_bar(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


@torch.no_grad()
def predict_logits(model: nn.Module, images: Any, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) as float64, in batches. Not probabilities: float32 sigmoid saturates into ties."""
    images = check_images(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [
        model(as_unit_tensor(images[idx]).to(device)).double().cpu().numpy() for idx in batches(len(images), batch_size)
    ]
    model.train(was_training)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ metrics


def auc_from_group_weights(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from weighted positive/negative counts per distinct score, scores ascending on the last axis.

    Ties count 1/2. Works on (G,) or (B, G); NaN where one side is empty. Elementwise product + sum,
    not `@`: BLAS threads make a 1-D dot 30x slower on a busy shared machine.
    """
    tp, tn = pos.sum(-1), neg.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (np.cumsum(neg, axis=-1) - 0.5 * neg)).sum(-1) / (tp * tn)
    return np.where((tp > 0) & (tn > 0), auc, np.nan)


def grouped_auc(inv: np.ndarray, n_groups: int, w_pos: np.ndarray, w_neg: np.ndarray) -> float:
    """AUROC of weighted samples; `inv` = rank of each sample's score among the distinct scores."""
    return float(auc_from_group_weights(np.bincount(inv, w_pos, n_groups), np.bincount(inv, w_neg, n_groups)))


def weighted_auroc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AUROC with integer-like sample weights (a weight k equals k copies: what a bootstrap resample is)."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    uniq, inv = np.unique(scores, return_inverse=True)
    y = np.asarray(y, dtype=np.float64)
    return grouped_auc(inv, len(uniq), w * y, w * (1 - y))


def cluster_codes(patient_ids: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Resampling unit per image: its patient, or the image itself when there are no patient ids."""
    if patient_ids is None:
        return np.arange(n), n
    uniq, codes = np.unique(patient_ids, return_inverse=True)
    return codes, len(uniq)


def bootstrap_counts(n_units: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Per replicate, how many times each unit (patient) was drawn, with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        yield np.bincount(rng.integers(0, n_units, n_units), minlength=n_units).astype(np.float64)


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval over the finite replicates, (NaN, NaN) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [a, 100 - a])
    return float(lo), float(hi)


def _label_stats(labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    stats = []
    for c, name in enumerate(classes):
        col = labels[:, c]
        n_pos, n_neg = int((col == 1).sum()), int((col == 0).sum())
        if n_pos and n_neg:
            reason = None
        elif n_pos + n_neg == 0:
            reason = f"class {name}: every test label is masked"
        else:
            reason = (
                f"class {name}: test labels are all {'positive' if n_pos else 'negative'} "
                f"({n_pos + n_neg} unmasked images), AUROC undefined"
            )
        stats.append({"n_pos": n_pos, "n_neg": n_neg, "n_masked": int(np.isnan(col).sum()), "reason": reason})
    return stats


def _auroc_bootstrap(
    score_sets: Sequence[np.ndarray],
    labels: np.ndarray,
    patient_ids: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC per score set and class: point (R, K) and bootstrap replicates (B, R, K), NaN where undefined.

    All score sets share the same resamples, so differences and ratios between them are paired.
    A replicate weights each image by how often its patient was drawn, so per class and score set the
    weighted positives/negatives per distinct score are counts (b, P) @ M (P, G), with M a sparse
    patient x score-rank matrix: replicates are computed in blocks, never image by image.
    """
    n, k = labels.shape
    codes, n_units = cluster_codes(patient_ids, n)
    counts = np.stack(list(bootstrap_counts(n_units, n_bootstrap, seed))) if n_bootstrap else np.zeros((0, n_units))
    reps = np.full((n_bootstrap, len(score_sets), k), math.nan)
    point = np.full((len(score_sets), k), math.nan)
    for c in range(k):
        valid = ~np.isnan(labels[:, c])
        y = labels[valid, c].astype(np.float64)
        for r, scores in enumerate(score_sets):
            uniq, inv = np.unique(scores[valid, c], return_inverse=True)
            point[r, c] = grouped_auc(inv, len(uniq), y, 1 - y)
            if not n_bootstrap or math.isnan(point[r, c]):
                continue
            m_pos, m_neg = (
                coo_matrix((w, (codes[valid], inv)), shape=(n_units, len(uniq))).tocsc() for w in (y, 1 - y)
            )
            block = max(1, 2**21 // len(uniq))  # replicates per block: a few (block, G) float64 arrays
            for b0 in range(0, n_bootstrap, block):
                cb = counts[b0 : b0 + block]
                pos, neg = (np.asarray((m.T @ cb.T).T) for m in (m_pos, m_neg))
                reps[b0 : b0 + block, r, c] = auc_from_group_weights(pos, neg)
    return point, reps


def _summarize(
    point: np.ndarray, reps: np.ndarray, classes: list[str], stats: list[dict[str, Any]], level: float
) -> dict[str, Any]:
    """Per-class and mean AUROC for one setting. point (R, K) over seeds; reps (B, R, K)."""
    evaluable = [c for c in range(len(classes)) if stats[c]["reason"] is None]
    rep_mean = reps.mean(axis=1)  # seed-averaged AUROC per replicate (B, K)
    table: dict[str, Any] = {}
    for c, name in enumerate(classes):
        entry: dict[str, Any] = {"auroc": float(point[:, c].mean())}  # NaN when not evaluable
        if len(point) > 1:
            entry["std"] = float(point[:, c].std(ddof=1))
            entry["per_seed"] = [float(v) for v in point[:, c]]
        entry["ci_low"], entry["ci_high"] = percentile_ci(rep_mean[:, c], level)
        entry["n_bootstrap_valid"] = int(np.isfinite(rep_mean[:, c]).sum())
        entry.update(stats[c])
        table[name] = entry
    seed_means = point[:, evaluable].mean(axis=1) if evaluable else np.full(len(point), math.nan)
    out: dict[str, Any] = {
        "classes": table,
        "mean_auroc": float(seed_means.mean()),
        "mean_over": [classes[c] for c in evaluable],
    }
    if len(point) > 1:
        out["mean_auroc_std"] = float(seed_means.std(ddof=1))
        out["mean_auroc_per_seed"] = [float(v) for v in seed_means]
    mean_reps = rep_mean[:, evaluable].mean(axis=1) if evaluable else np.full(len(reps), math.nan)
    out["mean_ci_low"], out["mean_ci_high"] = percentile_ci(mean_reps, level)
    out["mean_n_bootstrap_valid"] = int(np.isfinite(mean_reps).sum())
    return out


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
    labels = _check_labels(labels, len(scores), "test")
    if scores.shape != labels.shape:
        raise DataError(f"scores have shape {scores.shape} but labels {labels.shape}")
    ids = check_patient_ids(patient_ids, len(labels), "test")
    names = [str(c) for c in classes] if classes is not None else [f"class_{c}" for c in range(labels.shape[1])]
    if len(names) != labels.shape[1]:
        raise DataError(f"{len(names)} class names for {labels.shape[1]} label columns")
    point, reps = _auroc_bootstrap([scores], labels, ids, n_bootstrap, seed)
    out = _summarize(point, reps, names, _label_stats(labels, names), ci_level)
    out.update(_resampling(ids, labels, n_bootstrap, ci_level))
    return out


def _resampling(ids: np.ndarray | None, labels: np.ndarray, n_bootstrap: int, level: float) -> dict[str, Any]:
    return {
        "n_images": len(labels),
        "n_patients": None if ids is None else len(np.unique(ids)),
        "resample_unit": "image" if ids is None else "patient",
        "n_bootstrap": n_bootstrap,
        "ci_level": level,
        "ci_method": "percentile bootstrap",
    }


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


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over classes with both label values (no bootstrap): the early-stopping criterion."""
    values = [
        weighted_auroc(scores[m, c], labels[m, c]) for c in range(labels.shape[1]) for m in [~np.isnan(labels[:, c])]
    ]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# ----------------------------------------------------------------------------------------- training


def train_classifier(
    train_images: Any,
    train_labels: np.ndarray,
    val_images: Any,
    val_labels: np.ndarray,
    cfg: ClassifierConfig | Mapping[str, Any] | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train with masked BCE + Adam; early stopping on mean val AUROC; returns the BEST epoch's model.

    Batches are read from the (possibly memory-mapped) arrays one at a time, so memory stays bounded.
    """
    cfg = coerce_config(ClassifierConfig, cfg)
    train = LabeledImages(train_images, train_labels, name="train")
    val = LabeledImages(val_images, val_labels, name="val")
    k = train.labels.shape[1]
    if val.labels.shape[1] != k or val.images.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f"train and val differ: images {train.images.shape[1:]} vs {val.images.shape[1:]}, "
            f"{k} vs {val.labels.shape[1]} classes"
        )
    if math.isnan(mean_auroc(np.zeros(val.labels.shape), val.labels)):
        raise DataError(
            "validation split has no class with both positive and negative labels: "
            "early stopping on AUROC is impossible"
        )
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    channels, size = train.images.shape[1], train.images.shape[2]
    model = build_classifier(cfg.model, channels, k, size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_state, waited = -math.inf, 0, None, 0
    n_steps = math.ceil(len(train) / cfg.batch_size)
    with progress_bar(cfg.progress) as bar:
        task = bar.add_task(f"{cfg.model} seed {cfg.seed}", total=cfg.epochs * n_steps) if bar else None
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total, count = 0.0, 0
            for idx in batches(len(train), cfg.batch_size, rng.permutation(len(train))):
                if bar:
                    bar.advance(task)
                if len(idx) < 2:  # batch norm cannot train on one image
                    continue
                x = as_unit_tensor(train.images[idx])
                x = (light_augment(x, gen) if cfg.augment else x).to(device)
                loss, n_labels = masked_bce(model(x), torch.from_numpy(train.labels[idx]).to(device))
                if n_labels == 0:
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + loss.item() * n_labels, count + n_labels
            val_auc = mean_auroc(predict_logits(model, val.images, cfg.eval_batch_size), val.labels)
            history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_mean_auroc": val_auc})
            if val_auc > best_auc:
                best_auc, best_epoch, waited = val_auc, epoch, 0
                best_state = copy.deepcopy({k_: v.detach().cpu() for k_, v in model.state_dict().items()})
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val_mean_auroc": best_auc,
        "stopped_early": len(history) < cfg.epochs,
        "n_train_images": len(train),
        "n_val_images": len(val),
        "config": asdict(cfg),
    }
    return model, info


# --------------------------------------------------------------------------------------- the report


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
        for name, s in zip(classes, _label_stats(sets["real_test"].labels, classes), strict=True)
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
    point, reps = _auroc_bootstrap(scores, test.labels, test.patient_ids, cfg.n_bootstrap, cfg.bootstrap_seed)
    n_seeds = len(cfg.seeds)
    point = point.reshape(len(SETTINGS), n_seeds, -1)
    reps = reps.reshape(len(reps), len(SETTINGS), n_seeds, -1)
    stats = _label_stats(test.labels, classes)
    results = {s: _summarize(point[i], reps[:, i], classes, stats, cfg.ci_level) for i, s in enumerate(SETTINGS)}
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
    out.update(_resampling(test.patient_ids, test.labels, cfg.n_bootstrap, cfg.ci_level))
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
    gain = {}
    for c, name in enumerate(classes):
        lo, hi = percentile_ci(r[:, 2, c] - r[:, 0, c], level)
        gain[name] = {"gain": float(p[2, c] - p[0, c]), "ci_low": lo, "ci_high": hi}
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
