"""Do the real-trained and the synthetic-trained classifier look at the same parts of an image?

    result = saliency_agreement(real_model, synth_model, test_images, test_labels, classes)
    result.summary()                      # JSON: mean/median agreement overall and per class group
    save_grid(result, test_images, "saliency.png")   # rows: image | real-model map | synthetic-model map

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from monai.visualize import GradCAM  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torch import nn  # noqa: E402

from medsyn.errors import ConfigError, DataError  # noqa: E402
from medsyn.evaluate.data import as_unit_tensor, batches, check_images  # noqa: E402
from medsyn.io import atomic_path  # noqa: E402

NO_POSITIVE = "no positive label"


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


@torch.no_grad()
def _logits(model: nn.Module, images: Any, batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = [
        model(as_unit_tensor(np.asarray(images[i])).to(device)).cpu().numpy() for i in batches(len(images), batch_size)
    ]
    model.train(was)
    return np.concatenate(out)


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
    targets = explained_class(labels, _logits(real_model, images, batch_size))
    real = gradcam_maps(real_model, images, targets, target_layer, batch_size)
    synth = gradcam_maps(synth_model, images, targets, target_layer, batch_size)
    positive = np.nan_to_num(labels) == 1
    groups = ["+".join(c for c, p in zip(classes, row, strict=True) if p) or NO_POSITIVE for row in positive]
    rho = np.array([spearman(a, b) for a, b in zip(real, synth, strict=True)])
    iou = np.array([top_iou(a, b, top_fraction) for a, b in zip(real, synth, strict=True)])
    return SaliencyResult(list(classes), targets, groups, real, synth, rho, iou, top_fraction)


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


def grid_figure(
    result: SaliencyResult, images: Any, n: int = 8, seed: int = 0, names: tuple[str, str] = MODEL_NAMES
) -> Figure:
    """Rows of image | first model's map | second model's map (maps over the image); `names` head the columns
    (e.g. two real-trained seeds, for the baseline agreement of two models trained on the same data)."""
    rows = pick_rows(result, n, seed)
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows)), squeeze=False)
    titles = ("image", *names)
    for r, i in enumerate(rows):
        img = as_unit_tensor(np.asarray(images[[i]]))[0].mean(0).numpy()
        for c, m in enumerate((None, result.real_maps[i], result.synthetic_maps[i])):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if m is not None:
                ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(f"{result.groups[i]}\n({result.classes[result.targets[i]]})", fontsize=8)
        text = (
            "a map is constant: undefined"
            if np.isnan(result.iou[i])
            else f"rho {result.spearman[i]:.2f}, IoU {result.iou[i]:.2f}"
        )
        axes[r, 2].set_xlabel(text, fontsize=8)
    fig.tight_layout()
    return fig


def save_grid(
    result: SaliencyResult,
    images: Any,
    path: str | Path,
    n: int = 8,
    seed: int = 0,
    names: tuple[str, str] = MODEL_NAMES,
) -> Path:
    """Write `grid_figure` as a PNG (atomically); returns the path."""
    fig = grid_figure(result, images, n, seed, names)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
