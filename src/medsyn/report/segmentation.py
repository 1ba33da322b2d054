"""The report's segmentation section: Dice/F1 of U-Nets trained on real, synthetic and both, the KL divergences
against their real-vs-real baselines, and a grid of mask | synthetic image | nearest real training image.

Numbers come from metrics.json "segmentation" (`medsyn.evaluate.segmentation.SegmentationUtility.to_dict()`)
and "segmentation_divergence" (`medsyn.evaluate.mask_divergence.MaskDivergence.to_dict()`); the grid from `nearest_real` + `triplet_grid`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch.nn.functional as F

from medsyn.evaluate.data import as_unit_tensor, batches, check_images
from medsyn.evaluate.neighbors import Neighbors, knn
from medsyn.report.figures import REAL, SETTING_NAMES, SYNTH, _mosaic, _picture, encode
from medsyn.report.markup import _ci, _e, _img, _num, _table

MASK_COLORS = np.array(
    [[0, 0, 0], [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0],
     [204, 121, 167]], np.uint8)  # fmt: skip
"""Background black, then colour-blind-safe colours (Okabe-Ito) for labels 1..7, cycled beyond."""


def _pixels(images: Any, size: int) -> np.ndarray:
    """Images as flat float vectors in [0, 1], area-averaged to at most size x size (pixel noise and
    sub-pixel shifts matter less), read batch by batch."""
    images = check_images(images)
    out = []
    for idx in batches(len(images), 256):
        x = as_unit_tensor(np.asarray(images[idx]))
        out.append((F.adaptive_avg_pool2d(x, size) if x.shape[-1] > size else x).flatten(1).numpy())
    return np.concatenate(out)


def nearest_real(synthetic: Any, real: Any, size: int = 32, device: str | None = None) -> Neighbors:
    """Each synthetic image's nearest real training image by Euclidean pixel distance after downsampling."""
    return knn(_pixels(synthetic, size), _pixels(real, size), 1, device=device)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """(1, S, S) labels -> (3, S, S) uint8 RGB."""
    labels = np.where(mask[0] > 0, (mask[0].astype(np.int64) - 1) % (len(MASK_COLORS) - 1) + 1, 0)
    return MASK_COLORS[labels].transpose(2, 0, 1)


def triplet_grid(masks: np.ndarray, synthetic: Any, real: Any, nearest: Neighbors, rows: int = 8) -> str | None:
    """Up to `rows` rows of mask | synthetic image made from it | nearest real training image (distance
    on the left): a synthetic image that copies a training image shows as a twin in the last column."""
    n = min(rows, len(masks))
    if n == 0:
        return None
    idx = nearest.indices[:n, 0]
    cells = [[colour_mask(np.asarray(masks[i])), np.asarray(synthetic[[i]])[0], np.asarray(real[[j]])[0]]
             for i, j in enumerate(idx)]  # fmt: skip
    if cells[0][1].dtype != np.uint8:  # float images in [0, 1]
        cells = [[c if c.dtype == np.uint8 else (np.clip(c, 0, 1) * 255).round().astype(np.uint8) for c in row]
                 for row in cells]  # fmt: skip
    mosaic, tops = _mosaic(cells)
    size = cells[0][0].shape[-1]
    fig, ax = _picture(mosaic, 0.9, n, 3)
    ax.set_yticks([t + size / 2 for t in tops])
    ax.set_yticklabels([f"d={d:.3g}" for d in nearest.distances[:n, 0]], fontsize=7)
    ax.tick_params(length=0)
    width = mosaic.shape[1] / 3
    for col, (text, colour) in enumerate([("mask", "black"), ("synthetic", SYNTH), ("nearest real", REAL)]):
        ax.text((col + 0.5) * width, -4, text, ha="center", va="bottom", color=colour, fontsize=9)
    return encode(fig)


def _dice_rows(seg: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for setting in ("trtr", "tstr", "augmented"):
        e = seg[setting]
        per_label = [_ci(e["labels"][name]["dice"], "value") for name in seg["labels"]]
        rows.append([_e(SETTING_NAMES[setting]), _ci(e["mean_dice"], "value"), _ci(e["mean_f1"], "value"), *per_label])
    blank = [""] * len(seg["labels"])
    rows.append(["synthetic / real (ratio, paired)", _ci(seg["ratio"]["dice"], "value"),
                 _ci(seg["ratio"]["f1"], "value"), *blank])  # fmt: skip
    rows.append(["real + synthetic − real (gain, paired)", _ci(seg["augmentation_gain"]["dice"], "value"),
                 _ci(seg["augmentation_gain"]["f1"], "value"), *blank])  # fmt: skip
    return rows


def _kl_rows(div: Mapping[str, Any]) -> list[list[str]]:
    return [[_e(p["what"]), _num(p["synthetic"]["symmetric_kl"], 4), _num(p["baseline"]["symmetric_kl"], 4),
             _num(p["over_baseline"], 2)] for p in [div["intensity"], *div["area"]]]  # fmt: skip


def segmentation_section(
    seg: Mapping[str, Any] | None, divergence: Mapping[str, Any] | None, grid: str | None, silver_standard: bool
) -> str:
    """The section's HTML (empty without a "segmentation" entry). `silver_standard`: the masks were made by a
    model, not drawn by annotators, which bounds what Dice can show."""
    if not seg:
        return ""
    out = "<h3>Segmentation: do synthetic image–mask pairs train a segmenter for real patients?</h3>"
    if silver_standard:
        out += ("<p><b>Silver-standard masks.</b> The masks were made by a model, not drawn by annotators: Dice "
                "measures agreement with that model (silver-standard), and its errors are in every number here.</p>")  # fmt: skip
    counts, res = seg["counts"], seg["resampling"]
    out += (f"<p>A U-Net was trained on real pairs, on synthetic pairs and on both, each selected on the real "
            f"validation split, and tested on the same {_num(counts['n_real_test_images'])} held-out real images "
            f"({_num(counts['n_real_test_patients'])} patients). Dice: {_e(seg['metric_definitions']['dice'])}. "
            f"F1: {_e(seg['metric_definitions']['f1'])}. Intervals: {_num(res['n_bootstrap'])} bootstrap resamples "
            f"of test {_e(res['resample_unit'])}s ({100 * res['ci_level']:g}%), the same resamples for every "
            "setting, so the ratio and the gain are paired.</p>")  # fmt: skip
    headers = ["trained on", "mean Dice", "mean F1", *(f"Dice {name}" for name in seg["labels"])]
    out += _table(headers, _dice_rows(seg), range(1, len(headers)))
    if divergence:
        out += (f"<p>Distribution divergences (symmetric KL, nats): real half A ({_num(divergence['n_real_a'])} "
                f"images) against {_num(divergence['n_synthetic'])} synthetic images, and against real half B "
                f"({_num(divergence['n_real_b'])} images, split by {_e(divergence['split'])}), the baseline that "
                "sampling alone gives. Mask area: foreground fraction per image and label.</p>")  # fmt: skip
        out += _table(["distribution", "synthetic vs real", "real vs real (baseline)", "× baseline"],
                      _kl_rows(divergence), (1, 2, 3))  # fmt: skip
    return out + _img(grid, "mask, synthetic and nearest real images",
                      "Rows: a mask, the synthetic image generated from it, and the real training image nearest to "
                      "that synthetic image in (downsampled) pixel space, with their distance d.")  # fmt: skip
