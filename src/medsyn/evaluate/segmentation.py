"""Segmentation utility of synthetic (image, mask) pairs: does a U-Net trained on them segment REAL patients?

    sets = [SegmentationSet(images, masks, patient_ids, name=n) for ...]   # masks (N, 1, S, S), values 0..L
    result = segmentation_utility(real_train, real_val, real_test, synthetic, SegmentationConfig(epochs=20))
    metrics["segmentation"] = result.to_dict()

The segmentation twin of `utility.py`: a MONAI 2-D U-Net is trained on real pairs (TRTR), on synthetic pairs
(TSTR) and on both (augmented), each selected by early stopping on the Dice of the REAL validation split, and
all three are tested on the same held-out real patients with the same patient bootstrap resamples, so the
ratio TSTR/TRTR and the gain augmented - TRTR have paired intervals.

Two scores per foreground label, both from MONAI (`DiceMetric`, `get_confusion_matrix`):
* Dice: mean over test images of the per-image Dice. An image whose true mask lacks the label is left out of
  that label's Dice (MONAI `ignore_empty`: Dice is undefined there); a missed label (empty prediction) is 0.
* F1: pixel F1 pooled over all test images, 2TP / (2TP + FP + FN). It counts what Dice leaves out: false
  positive pixels on images without the label. Per image F1 and Dice are the same number; pooled they differ.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, get_confusion_matrix
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from torch import nn

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.classifier import to_device
from medsyn.evaluate.config import check_positive, coerce_config
from medsyn.evaluate.data import ConcatView, batches, check_images, check_patient_ids
from medsyn.evaluate.stats import bootstrap_counts, cluster_codes, percentile_ci, resampling
from medsyn.evaluate.utility import SETTINGS
from medsyn.io import ARRAY, Result
from medsyn.progress import progress_bar
from medsyn.seed import seed_everything


@dataclass
class SegmentationConfig:
    """Training settings of one segmenter; the defaults are small enough for a CPU."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    strides: list[int] = field(default_factory=lambda: [2, 2])  # image size must be divisible by their product
    num_res_units: int = 1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 5  # epochs without a better validation mean Dice before stopping
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 256
    progress: bool = False

    def __post_init__(self) -> None:
        check_positive("segmentation", epochs=self.epochs, lr=self.lr, patience=self.patience,
                       batch_size=self.batch_size, eval_batch_size=self.eval_batch_size)  # fmt: skip
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ConfigError(
                f"segmentation: a U-Net needs >= 2 channels and one stride fewer, got {self.channels}, {self.strides}"
            )


@dataclass
class SegmentationSet:
    """Images (N, C, S, S) uint8 or float in [0, 1], masks (N, 1, S, S) with values 0 (background) .. L,
    optional patient ids (the bootstrap unit; synthetic sets usually have none)."""

    images: Any
    masks: Any
    patient_ids: Any = None
    name: str = "data"

    def __post_init__(self) -> None:
        self.images = check_images(self.images, f"{self.name} images")
        masks = np.asarray(self.masks)
        masks = masks[:, None] if masks.ndim == 3 else masks
        n, size = len(self.images), self.images.shape[2:]
        if len(masks) != n:
            raise DataError(f"{self.name}: {n} images but {len(masks)} masks")
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != size:
            raise DataError(f"{self.name} masks must have shape ({n}, 1, {size[0]}, {size[1]}), got {masks.shape}")
        integral = np.issubdtype(masks.dtype, np.integer) or np.array_equal(masks, np.round(masks))
        if masks.dtype != np.uint8 and (not integral or masks.min() < 0 or masks.max() > 255):
            raise DataError(f"{self.name} masks must hold integer labels 0..255")
        self.masks = masks.astype(np.uint8, copy=False)
        if not self.masks.any():
            raise DataError(f"{self.name}: no mask has any foreground pixel; nothing to segment")
        self.patient_ids = check_patient_ids(self.patient_ids, n, self.name)

    def __len__(self) -> int:
        return len(self.images)

    def label_names(self, names: Sequence[str] | None) -> list[str]:
        """`names` as strings, else label_1 .. label_L for the largest label L in these masks."""
        top = int(self.masks.max())
        return [str(n) for n in names] if names is not None else [f"label_{i}" for i in range(1, top + 1)]

    def check_labels(self, n_labels: int) -> None:
        top = int(self.masks.max())
        if top > n_labels:
            raise DataError(f"{self.name} masks hold label {top}, beyond the {n_labels} label(s) of the real masks")


def build_segmenter(in_channels: int, n_labels: int, cfg: SegmentationConfig) -> UNet:
    """A 2-D MONAI U-Net with one output per class, background included (softmax over L + 1)."""
    return UNet(2, in_channels, n_labels + 1, cfg.channels, cfg.strides, num_res_units=cfg.num_res_units)


@torch.no_grad()
def predict_masks(model: nn.Module, images: Any, batch_size: int = 256) -> np.ndarray:
    """Arg-max label maps (N, 1, S, S) uint8."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(to_device(np.asarray(images[idx]), device)).argmax(1, keepdim=True).to(torch.uint8).cpu().numpy()
           for idx in batches(len(images), batch_size)]  # fmt: skip
    model.train(was_training)
    return np.concatenate(out)


def image_scores(pred: np.ndarray, true: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image and foreground label: Dice (N, L), NaN where the true mask lacks the label, and the pixel
    counts (N, L, 3) TP, FP, FN that pooled F1 is made of."""
    p, t = (one_hot(torch.from_numpy(m.astype(np.int64)), n_labels + 1) for m in (pred, true))
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t)
    conf = get_confusion_matrix(p, t, include_background=False)  # (N, L, 4): tp, fp, tn, fn
    return dice.double().numpy(), conf[..., [0, 1, 3]].double().numpy()


def mean_dice(dice: np.ndarray) -> float:
    """Mean over labels of the per-label mean image Dice (labels absent from every mask left out)."""
    per_label = [float(np.nanmean(col)) for col in dice.T if np.isfinite(col).any()]
    return float(np.mean(per_label)) if per_label else math.nan


def train_segmenter(
    images: Any,
    masks: np.ndarray,
    cfg: SegmentationConfig | Mapping[str, Any] | None = None,
    val_images: Any = None,
    val_masks: np.ndarray | None = None,
    n_labels: int | None = None,
) -> tuple[UNet, dict[str, Any]]:
    """Train with MONAI DiceCELoss + Adam and return the model of the best validation mean Dice (the last
    epoch's when there is no validation set). `n_labels` defaults to the largest label in `masks`."""
    cfg = coerce_config(SegmentationConfig, cfg)
    train = SegmentationSet(images, masks, name="train")
    n_labels = int(train.masks.max()) if n_labels is None else n_labels
    train.check_labels(n_labels)
    val = None if val_images is None else SegmentationSet(val_images, val_masks, name="val")
    if val is not None:
        val.check_labels(n_labels)
        if val.images.shape[1:] != train.images.shape[1:]:
            raise DataError(f"train images {train.images.shape[1:]} but val images {val.images.shape[1:]}")
    size, factor = train.images.shape[2], math.prod(cfg.strides)
    if size % factor:
        raise ConfigError(f"segmentation: image size {size} is not divisible by the U-Net strides' product {factor}")
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model = build_segmenter(train.images.shape[1], n_labels, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, Any]] = []
    best, best_epoch, best_state, waited = -math.inf, 0, None, 0
    n_steps = math.ceil(len(train) / cfg.batch_size)
    with progress_bar(f"segmenter seed {cfg.seed}", cfg.epochs * n_steps, quiet=not cfg.progress) as advance:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total = 0.0
            for idx in batches(len(train), cfg.batch_size, rng.permutation(len(train))):
                advance(1)
                x = to_device(np.asarray(train.images[idx]), device)
                y = torch.from_numpy(train.masks[idx].astype(np.int64)).to(device)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            entry: dict[str, Any] = {"epoch": epoch, "train_loss": total / len(train)}
            history.append(entry)
            if val is None:
                continue
            pred = predict_masks(model, val.images, cfg.eval_batch_size)
            entry["val_mean_dice"] = score = mean_dice(image_scores(pred, val.masks, n_labels)[0])
            if score > best:
                best, best_epoch, waited = score, epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    info = {
        "epochs": history,
        "best_epoch": best_epoch if val is not None else len(history),
        "best_val_mean_dice": best if val is not None else None,
        "stopped_early": len(history) < cfg.epochs,
        "n_train_images": len(train),
        "config": asdict(cfg),
    }
    return model, info


# ------------------------------------------------------------------------------------- the utility test


@dataclass
class SegmentationUtility(Result):
    """metrics.json "segmentation": per setting (trtr, tstr, augmented) per-label and mean Dice and F1 with
    patient-bootstrap CIs; `ratio` TSTR/TRTR and `augmentation_gain` augmented - TRTR with paired CIs."""

    labels: list[str]
    trtr: dict[str, Any]
    tstr: dict[str, Any]
    augmented: dict[str, Any]
    ratio: dict[str, Any]
    augmentation_gain: dict[str, Any]
    counts: dict[str, Any]
    resampling: dict[str, Any]
    segmenter: dict[str, Any]
    metric_definitions: dict[str, str]
    dice_per_image: np.ndarray = field(metadata=ARRAY)  # (3 settings, n_test, L), NaN where a label is absent


METRICS = ("dice", "f1")
METRIC_DEFINITIONS = {
    "dice": "mean per-image Dice (MONAI DiceMetric); images whose true mask lacks the label are left out of "
    "that label, an empty prediction where the label is present counts 0",
    "f1": "pixel F1 pooled over all test images, 2TP/(2TP+FP+FN): false positives on images without the label count",
    "mean": "mean over the labels present in some real test mask",
}


def _check_disjoint(sets: Mapping[str, SegmentationSet]) -> None:
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ia, ib = sets[a].patient_ids, sets[b].patient_ids
            shared = np.intersect1d(ia, ib) if ia is not None and ib is not None else []
            if len(shared):
                raise DataError(f"{len(shared)} patient(s) in both {a} and {b} (e.g. {shared[0]!r}); split by patient")


def _from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and F1 from summed [Dice, images with the label, TP, FP, FN] on the last axis."""
    d, n, tp, fp, fn = np.moveaxis(sums, -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return d / n, 2 * tp / (2 * tp + fp + fn)


def _entry(point: float, reps: np.ndarray, level: float) -> dict[str, Any]:
    lo, hi = percentile_ci(reps, level)
    return {"value": float(point), "ci_low": lo, "ci_high": hi, "n_bootstrap_valid": int(np.isfinite(reps).sum())}


def segmentation_utility(
    real_train: SegmentationSet,
    real_val: SegmentationSet,
    real_test: SegmentationSet,
    synthetic: SegmentationSet,
    cfg: SegmentationConfig | Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    *,
    label_names: Sequence[str] | None = None,
    min_test_patients: int = 5,
) -> SegmentationUtility:
    """TRTR, TSTR and real+synthetic U-Nets, tested on the same real patients (see the module docstring).

    The label count is `len(label_names)`, else the largest label in the real training masks; any mask
    beyond it is a DataError. `seed` seeds the bootstrap; `cfg.seed` the training.
    """
    cfg = coerce_config(SegmentationConfig, cfg)
    if n_bootstrap < 0 or not 0 < level < 1:
        raise ConfigError(f"segmentation: n_bootstrap must be >= 0 and level in (0, 1), got {n_bootstrap}, {level}")
    sets = {"real_train": real_train, "real_val": real_val, "real_test": real_test, "synthetic": synthetic}
    names = real_train.label_names(label_names)
    n_labels = len(names)
    for name, data in sets.items():
        data.check_labels(n_labels)
        if data.images.shape[1:] != real_train.images.shape[1:]:
            raise DataError(f"image shape: real_train {real_train.images.shape[1:]}, {name} {data.images.shape[1:]}")
    _check_disjoint({k: v for k, v in sets.items() if k != "synthetic"})
    test = real_test
    codes, n_units = cluster_codes(test.patient_ids, len(test))
    if n_units < min_test_patients:
        unit = "images" if test.patient_ids is None else "patients"
        raise DataError(f"real_test has {n_units} {unit}, fewer than the {min_test_patients} a bootstrap CI needs")
    train_sets = {
        "trtr": (real_train.images, real_train.masks),
        "tstr": (synthetic.images, synthetic.masks),
        "augmented": (ConcatView([real_train.images, synthetic.images]),
                      np.concatenate([real_train.masks, synthetic.masks])),
    }  # fmt: skip
    per_image, training = [], {}
    for setting in SETTINGS:
        model, info = train_segmenter(*train_sets[setting], cfg, real_val.images, real_val.masks, n_labels)
        dice, conf = image_scores(predict_masks(model, test.images, cfg.eval_batch_size), test.masks, n_labels)
        per_image.append(np.concatenate([np.nan_to_num(dice)[..., None], np.isfinite(dice)[..., None], conf], -1))
        training[setting] = {k: info[k] for k in ("best_epoch", "best_val_mean_dice", "stopped_early")}
    values = np.stack(per_image, 1)  # (N, 3 settings, L, 5)
    by_unit = np.zeros((n_units, *values.shape[1:]))
    np.add.at(by_unit, codes, values)
    counts = np.stack(list(bootstrap_counts(n_units, n_bootstrap, seed))) if n_bootstrap else np.zeros((0, n_units))
    point = dict(zip(METRICS, _from_sums(by_unit.sum(0)), strict=True))  # metric -> (3 settings, L)
    reps = dict(zip(METRICS, _from_sums(np.tensordot(counts, by_unit, axes=1)), strict=True))  # (B, 3, L)
    present = np.isfinite(point["dice"][0])
    results: dict[str, dict[str, Any]] = {}
    for s, setting in enumerate(SETTINGS):
        labels = {
            name: {m: _entry(point[m][s, lab], reps[m][:, s, lab], level) for m in METRICS}
            | {"n_images_with_label": int(by_unit[:, s, lab, 1].sum())}
            for lab, name in enumerate(names)
        }
        means = {f"mean_{m}": _entry(point[m][s, present].mean(), reps[m][:, s, present].mean(-1), level)
                 for m in METRICS}  # fmt: skip
        results[setting] = {"labels": labels, **means, "training": training[setting]}
    ratio, gain = {}, {}
    for m in METRICS:
        pm, rm = point[m][:, present].mean(-1), reps[m][:, :, present].mean(-1)  # (3,), (B, 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[m] = _entry(pm[1] / pm[0], rm[:, 1] / rm[:, 0], level)
        gain[m] = _entry(pm[2] - pm[0], rm[:, 2] - rm[:, 0], level)
    return SegmentationUtility(
        labels=names,
        **results,
        ratio=ratio,
        augmentation_gain=gain,
        counts={f"n_{k}_images": len(v) for k, v in sets.items()}
        | {f"n_{k}_patients": None if v.patient_ids is None else len(np.unique(v.patient_ids)) for k, v in sets.items()},
        resampling=resampling(test.patient_ids, test.masks, n_bootstrap, level) | {"paired": True, "seed": seed},
        segmenter=asdict(cfg) | {"model": "monai UNet (2-D)", "loss": "DiceCELoss (softmax)",
                                 "model_selection": "early stopping on mean Dice of the real validation split"},
        metric_definitions=METRIC_DEFINITIONS,
        dice_per_image=np.where(values[..., 1] > 0, values[..., 0], np.nan).transpose(1, 0, 2),
    )  # fmt: skip
