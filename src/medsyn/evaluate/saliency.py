"""Do the real-trained and the synthetic-trained classifier look at the same parts of an image?

    result = saliency_agreement(real_model, synth_model, test_images, test_labels, classes)
    result.summary()                      # JSON: mean/median agreement overall and per class group
    save_grid(result, test_images, "saliency.png")   # rows: image | real-model map | synthetic-model map

`medsyn evaluate` runs it as a stage (`medsyn.evaluate.stages.saliency_stage`, settings `SaliencyConfig`):
the first-seed TRTR and TSTR classifiers, and a second real-trained seed as the baseline, on the same random
real test images; `baseline_comparison` gives metrics.json "saliency", `medsyn.evaluate.verdicts` the rule.

Both models explain the SAME class on the same real test images with Grad-CAM (MONAI's `GradCAM`, at the
last ReLU of the network unless `target_layer` names another layer; for medsyn's classifiers that is the
last feature map before the global pool). The class explained for an image is its first positive label;
an image with no positive label is explained for the class the real-trained model scores highest.

Agreement per image:
* `spearman`: rank correlation of the two maps over all pixels (1 = same ranking, 0 = unrelated);
* `iou`: intersection over union of the two maps' top `top_fraction` pixels (the "where it looks" regions);
  two unrelated maps score top_fraction / (2 - top_fraction) on average (`iou_chance` in the summary).
A map that is constant (Grad-CAM is 0 everywhere when no positive evidence flows to the layer) ranks
nothing: its agreement is NaN and counted as `undefined`. Low agreement together with a good TSTR AUROC
warns that the synthetic-trained model may rely on other cues (shortcuts) than the real-trained one.
Read it against a baseline: the agreement of two real-trained models that differ only in their seed
(`saliency_agreement(real_seed0, real_seed1, ...)`), because Grad-CAM maps of small networks already vary
between seeds. Grad-CAM shows positive evidence only: a class a model predicts from the ABSENCE of features
(e.g. "normal") can give constant, undefined maps.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from monai.visualize import GradCAM  # noqa: E402
from scipy.stats import spearmanr, wilcoxon  # noqa: E402
from torch import nn  # noqa: E402

from medsyn.errors import ConfigError, DataError  # noqa: E402
from medsyn.evaluate.classifier import predict_logits  # noqa: E402
from medsyn.evaluate.data import as_unit_tensor, batches, check_images  # noqa: E402
from medsyn.io import atomic_path  # noqa: E402

NO_POSITIVE = "no positive label"


@dataclass
class SaliencyConfig:
    """Settings of the evaluation's saliency stage: `images` real test images explained (0 switches the
    stage off), the top fraction of pixels compared by IoU, and the rows of the report's grid."""

    images: int = 300
    top_fraction: float = 0.1
    grid_rows: int = 8
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.images < 0 or self.grid_rows < 1 or self.batch_size < 1:
            raise ConfigError("saliency: images must be >= 0 (0 = off), grid_rows and batch_size >= 1")
        if not 0 < self.top_fraction < 1:
            raise ConfigError(f"saliency.top_fraction must be in (0, 1), got {self.top_fraction}")


def last_relu(model: nn.Module) -> str:
    """Name of the model's last ReLU module: Grad-CAM's usual layer, the last spatial feature map."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.ReLU)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no ReLU layer; pass target_layer=")
    return names[-1]


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1], high = important (a constant map becomes 0). Used instead of MONAI's
    default normaliser, which maps (min, max) to (1, 0) and so flips which regions count as important."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps - lo.view(shape)) / span.view(shape)


def gradcam_maps(
    model: nn.Module, images: Any, targets: np.ndarray, target_layer: str | None = None, batch_size: int = 32
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] (each scaled by `unit_scale`) for class `targets[i]` of image i.

    The model is deep-copied first: MONAI's hooks stay on the module they wrap, and it turns in-place
    ReLUs off, neither of which should change the caller's model.
    """
    images = check_images(images)
    net = copy.deepcopy(model).eval()
    layer = target_layer or last_relu(net)
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=unit_scale)
    device = next(net.parameters()).device
    out = np.zeros((len(images), *images.shape[2:]), dtype=np.float32)
    for idx in batches(len(images), batch_size):
        x = as_unit_tensor(np.asarray(images[idx])).to(device)
        for k in np.unique(targets[idx]):  # MONAI explains one class index per call
            sel = np.flatnonzero(targets[idx] == k)
            maps = cam(x=x[sel], class_idx=int(k))
            out[idx[sel]] = maps[:, 0].detach().cpu().numpy()
    return np.nan_to_num(out, nan=0.0)


def explained_class(labels: np.ndarray, real_logits: np.ndarray) -> np.ndarray:
    """First positive class of each image; the real model's top class for images with none."""
    positive = np.nan_to_num(labels) == 1
    return np.where(positive.any(1), positive.argmax(1), real_logits.argmax(1))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; NaN when either is constant (it ranks nothing)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float) -> float:
    """IoU of the top `fraction` pixels of two maps (stable sort breaks ties); NaN when either is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    k = max(1, round(fraction * a.size))
    top_a = set(np.argsort(-a.ravel(), kind="stable")[:k])
    top_b = set(np.argsort(-b.ravel(), kind="stable")[:k])
    return len(top_a & top_b) / len(top_a | top_b)


@dataclass
class SaliencyResult:
    """Maps and per-image agreement of the real-trained and synthetic-trained models."""

    classes: list[str]
    targets: np.ndarray  # (N,) index of the class explained
    groups: list[str]  # (N,) class group of each image: positive classes joined by '+', or NO_POSITIVE
    real_maps: np.ndarray  # (N, H, W) float32 in [0, 1]
    synthetic_maps: np.ndarray
    spearman: np.ndarray  # (N,) NaN where undefined
    iou: np.ndarray
    top_fraction: float
    method: str = "gradcam"

    def summary(self) -> dict[str, Any]:
        """JSON-ready: method, top_fraction, iou_chance, images, undefined, overall and per_group
        ({n, defined, spearman_mean, spearman_median, iou_mean, iou_median}; statistics over the defined images)."""
        groups = np.asarray(self.groups, dtype=object)
        return {
            "method": self.method,
            "top_fraction": self.top_fraction,
            "iou_chance": self.top_fraction / (2 - self.top_fraction),
            "images": len(self.targets),
            "undefined": int((np.isnan(self.spearman) | np.isnan(self.iou)).sum()),
            "overall": _stats(self.spearman, self.iou),
            "per_group": {
                str(g): _stats(self.spearman[groups == g], self.iou[groups == g]) for g in sorted(set(self.groups))
            },
        }


def _stats(rho: np.ndarray, iou: np.ndarray) -> dict[str, Any]:
    def agg(fn: Any, v: np.ndarray) -> float | None:
        v = v[~np.isnan(v)]
        return float(fn(v)) if len(v) else None

    return {
        "n": len(rho),
        "defined": int((~np.isnan(rho) & ~np.isnan(iou)).sum()),  # the means and medians are over these
        "spearman_mean": agg(np.mean, rho),
        "spearman_median": agg(np.median, rho),
        "iou_mean": agg(np.mean, iou),
        "iou_median": agg(np.median, iou),
    }


def class_groups(labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each image's class group: its positive classes joined by '+', or NO_POSITIVE."""
    positive = np.nan_to_num(np.asarray(labels, dtype=np.float32)) == 1
    return ["+".join(c for c, p in zip(classes, row, strict=True) if p) or NO_POSITIVE for row in positive]


def explained_groups(labels: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each image's group by the class explained: that class when the image has a positive label, else
    NO_POSITIVE. Coarser than `class_groups` for multi-label data, where combinations split into tiny groups."""
    positive = (np.nan_to_num(np.asarray(labels, dtype=np.float32)) == 1).any(1)
    return [classes[t] if p else NO_POSITIVE for t, p in zip(targets, positive, strict=True)]


def agreement(
    real_maps: np.ndarray, synthetic_maps: np.ndarray, targets: np.ndarray, groups: list[str],
    classes: Sequence[str], top_fraction: float = 0.1,
) -> SaliencyResult:  # fmt: skip
    """Per-image agreement of two sets of maps of the same images (the maps of one model can be reused
    against several others, e.g. a synthetic-trained model and a second real-trained seed)."""
    if not 0 < top_fraction < 1:
        raise ConfigError(f"top_fraction must be in (0, 1), got {top_fraction}")
    rho = np.array([spearman(a, b) for a, b in zip(real_maps, synthetic_maps, strict=True)])
    iou = np.array([top_iou(a, b, top_fraction) for a, b in zip(real_maps, synthetic_maps, strict=True)])
    return SaliencyResult(list(classes), targets, groups, real_maps, synthetic_maps, rho, iou, top_fraction)


def seed_average(results: Sequence[SaliencyResult]) -> SaliencyResult:
    """Per-image agreement averaged over several models (training seeds) against the same reference maps,
    over the models whose maps are defined (NaN where none is): one seed's maps vary, an average less. The
    maps kept are the first model's."""
    first = results[0]
    if any(not np.array_equal(r.real_maps, first.real_maps) for r in results[1:]):
        raise DataError("saliency: a seed average needs the same reference maps")
    if len(results) == 1:
        return first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images stay NaN (undefined)
        rho = np.nanmean(np.stack([r.spearman for r in results]), axis=0)
        iou = np.nanmean(np.stack([r.iou for r in results]), axis=0)
    return replace(first, spearman=rho, iou=iou)


def saliency_agreement(
    real_model: nn.Module,
    synth_model: nn.Module,
    images: Any,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    top_fraction: float = 0.1,
    target_layer: str | None = None,
    batch_size: int = 32,
) -> SaliencyResult:
    """Grad-CAM maps of both models on `images` (uint8 or float [0, 1], (N, C, H, W)) and their agreement.

    `labels` (N, K) are the images' labels over `classes` (the models' outputs); see the module docstring."""
    images = check_images(images)
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != (len(images), len(classes)):
        raise DataError(f"labels must be ({len(images)}, {len(classes)}), got {labels.shape}")
    if not 0 < top_fraction < 1:
        raise ConfigError(f"top_fraction must be in (0, 1), got {top_fraction}")
    targets = explained_class(labels, predict_logits(real_model, images, batch_size))
    real = gradcam_maps(real_model, images, targets, target_layer, batch_size)
    synth = gradcam_maps(synth_model, images, targets, target_layer, batch_size)
    return agreement(real, synth, targets, class_groups(labels, classes), classes, top_fraction)


PAIRED_TEST = ("Wilcoxon signed-rank test, one-sided, on the images where all three maps are defined: the "
               "second real-trained seed agrees with the reference model better than the synthetic-trained model")


def _paired(synthetic: np.ndarray, baseline: np.ndarray) -> dict[str, Any]:
    """Gap (baseline minus synthetic agreement) over the images where both are defined, and its p-value."""
    both = ~np.isnan(synthetic) & ~np.isnan(baseline)
    diff = baseline[both] - synthetic[both]
    if not len(diff):
        return {"n": 0, "gap": None, "pvalue": None}
    p = 1.0 if np.all(diff == 0) else float(wilcoxon(diff, alternative="greater").pvalue)
    return {"n": int(both.sum()), "gap": float(diff.mean()), "pvalue": p}


def baseline_comparison(synthetic: SaliencyResult, baseline: SaliencyResult) -> dict[str, Any]:
    """JSON-ready: the synthetic-trained model's agreement with the reference (real-trained) model beside a
    second real-trained seed's, overall and per class group, with the paired gaps (same images, same
    reference maps, so the comparison is paired). Read by `medsyn.evaluate.verdicts.saliency_verdict`."""
    if synthetic.groups != baseline.groups or not np.array_equal(synthetic.real_maps, baseline.real_maps):
        raise DataError("saliency: the baseline must compare the same reference maps of the same images")
    groups = np.asarray(synthetic.groups, dtype=object)
    flat = np.ptp(synthetic.real_maps.reshape(len(groups), -1), axis=1) == 0

    def entry(mask: np.ndarray) -> dict[str, Any]:
        rho = _paired(synthetic.spearman[mask], baseline.spearman[mask])
        iou = _paired(synthetic.iou[mask], baseline.iou[mask])
        return {
            "n": int(mask.sum()),
            "reference_undefined": int(flat[mask].sum()),  # the real-trained model's own map is constant
            "synthetic": _stats(synthetic.spearman[mask], synthetic.iou[mask]),
            "baseline": _stats(baseline.spearman[mask], baseline.iou[mask]),
            "paired": {"n": rho["n"], "spearman_gap": rho["gap"], "spearman_pvalue": rho["pvalue"],
                       "iou_gap": iou["gap"], "iou_pvalue": iou["pvalue"]},
        }  # fmt: skip

    both = synthetic.summary()
    return {
        "method": synthetic.method, "top_fraction": synthetic.top_fraction, "iou_chance": both["iou_chance"],
        "images": both["images"],
        "undefined": {"synthetic": both["undefined"], "baseline": baseline.summary()["undefined"],
                      "reference": int(flat.sum())},
        "test": PAIRED_TEST,
        "overall": entry(np.ones(len(groups), bool)),
        "per_group": {str(g): entry(groups == g) for g in sorted(set(synthetic.groups))},
    }  # fmt: skip


def pick_rows(result: SaliencyResult, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` image indices, taken in turn from each class group (seeded), so every group shows."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(result.groups, dtype=object)
    pools = [list(rng.permutation(np.flatnonzero(groups == g))) for g in sorted(set(result.groups))]
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return np.array(picked, dtype=int)


MODEL_NAMES = ("real-trained model", "synthetic-trained model")


def _agreement_text(result: SaliencyResult, i: int) -> str:
    if np.isnan(result.iou[i]):
        return "constant map: undefined"
    return f"rho {result.spearman[i]:.2f}, IoU {result.iou[i]:.2f}"


def grid_figure(
    result: SaliencyResult, images: Any, n: int = 8, seed: int = 0, names: tuple[str, str] = MODEL_NAMES,
    baseline: tuple[str, SaliencyResult] | None = None,
) -> Figure:  # fmt: skip
    """Rows of image | first model's map | second model's map (maps over the image); `names` head the columns
    (e.g. two real-trained seeds, for the baseline agreement of two models trained on the same data).
    `baseline` (name, result against the same first-model maps) adds a fourth column, e.g. a second
    real-trained seed, so the reader sees how much two real-trained models already differ."""
    rows = pick_rows(result, n, seed)
    extra = [] if baseline is None else [baseline[1]]
    if extra and not np.array_equal(extra[0].real_maps, result.real_maps):
        raise DataError("saliency grid: the baseline must share the first model's maps")
    cols = 3 + len(extra)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.0 * len(rows)), squeeze=False)
    titles = ("image", *names, *([baseline[0]] if baseline else []))
    for r, i in enumerate(rows):
        img = as_unit_tensor(np.asarray(images[[i]]))[0].mean(0).numpy()
        maps = [None, result.real_maps[i], result.synthetic_maps[i], *(e.synthetic_maps[i] for e in extra)]
        for c, m in enumerate(maps):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if m is not None and np.ptp(m) > 0:  # a constant map (no evidence) is left off: the image shows
                ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        explained = result.classes[result.targets[i]]
        label = explained if result.groups[i] == explained else f"{result.groups[i]}\n(explained: {explained})"
        axes[r, 0].set_ylabel(label, fontsize=8)
        for c, res in enumerate([result, *extra], start=2):
            axes[r, c].set_xlabel(_agreement_text(res, i), fontsize=8)
    fig.tight_layout()
    return fig


def save_grid(
    result: SaliencyResult,
    images: Any,
    path: str | Path,
    n: int = 8,
    seed: int = 0,
    names: tuple[str, str] = MODEL_NAMES,
    baseline: tuple[str, SaliencyResult] | None = None,
) -> Path:
    """Write `grid_figure` as a PNG (atomically); returns the path."""
    fig = grid_figure(result, images, n, seed, names, baseline)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
