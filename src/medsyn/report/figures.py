"""The report's figures, drawn with matplotlib's Agg backend and returned as base64 PNG strings.

Every function takes plain arrays and numbers (no medsyn objects), so the figures can be redrawn from
saved values, and returns `None` when it has nothing to draw.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

REAL, SYNTH = "#1f77b4", "#d62728"
SETTING_COLORS = {"trtr": "#1f77b4", "tstr": "#d62728", "augmented": "#2ca02c"}
SETTING_NAMES = {"trtr": "train real (TRTR)", "tstr": "train synthetic (TSTR)", "augmented": "real + synthetic"}


def encode(fig: Figure, dpi: int = 100) -> str:
    """PNG bytes of `fig` as base64 text (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mosaic(
    cells: Sequence[Sequence[np.ndarray | None]], gap: int = 2, row_gaps: Sequence[int] | None = None
) -> tuple[np.ndarray, list[int]]:
    """A grid of uint8 (C, S, S) images (None = empty cell) as one RGB uint8 picture on white, and the
    top pixel row of each grid row. `row_gaps[i]`: the gap above row i (default `gap`).

    One `imshow` of a mosaic is ~50x faster than one matplotlib axes per image.
    """
    first = next(img for row in cells for img in row if img is not None)
    s = first.shape[-1]
    cols = max(len(r) for r in cells)
    gaps = list(row_gaps) if row_gaps is not None else [0] + [gap] * (len(cells) - 1)
    tops = list(np.cumsum(gaps) + s * np.arange(len(cells)))
    out = np.full((tops[-1] + s, cols * (s + gap) - gap, 3), 255, np.uint8)
    for top, row in zip(tops, cells, strict=True):
        for j, img in enumerate(row):
            if img is not None:
                rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
                out[top : top + s, j * (s + gap) : j * (s + gap) + s] = rgb.transpose(1, 2, 0)
    return out, [int(t) for t in tops]


def _picture(mosaic: np.ndarray, cell_inches: float, n_rows: int, n_cols: int) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(n_cols * cell_inches + 1.6, n_rows * cell_inches + 0.5))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig, ax


def sample_grid(groups: Sequence[tuple[str, np.ndarray | None, np.ndarray]], per_group: int) -> str | None:
    """Rows = label groups; left block real images, right block synthetic images of that group.

    `groups`: (name, real images or None (left out of the report), synthetic images).
    """
    if not groups or not any(len(g[2]) or (g[1] is not None and len(g[1])) for g in groups):
        return None
    with_real = any(r is not None for _, r, _ in groups)
    cells = []
    for _, real, synth in groups:
        row: list[np.ndarray | None] = []
        if with_real:
            row += [real[k] if real is not None and k < len(real) else None for k in range(per_group)] + [None]
        row += [synth[k] if k < len(synth) else None for k in range(per_group)]
        cells.append(row)
    mosaic, tops = _mosaic(cells)
    n_cols = len(cells[0])
    size = next(img for row in cells for img in row if img is not None).shape[-1]
    fig, ax = _picture(mosaic, 0.9, len(groups), n_cols)
    ax.set_yticks([t + size / 2 for t in tops])
    ax.set_yticklabels([name for name, _, _ in groups], fontsize=9)
    ax.tick_params(length=0)
    width = mosaic.shape[1] / n_cols
    if with_real:
        ax.text(per_group * width / 2, -4, "real (training split)", ha="center", va="bottom", color=REAL, fontsize=10)
        ax.text((per_group + 1 + per_group / 2) * width, -4, "synthetic", ha="center", va="bottom", color=SYNTH,
                fontsize=10)  # fmt: skip
    else:
        ax.text(mosaic.shape[1] / 2, -4, "synthetic", ha="center", va="bottom", color=SYNTH, fontsize=10)
    return encode(fig)


def closest_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray | None, float]], threshold: float, lower: str = "nearest real"
) -> str | None:
    """Synthetic images (upper row) above their nearest image (lower row: real training image, or another
    synthetic image for the diversity check), nearest first; distances below `threshold` in colour."""
    if not pairs:
        return None
    per_row = min(len(pairs), 8)
    cells: list[list[np.ndarray | None]] = []
    for start in range(0, len(pairs), per_row):
        block = pairs[start : start + per_row]
        cells += [[p[0] for p in block], [p[1] for p in block]]
    s = pairs[0][0].shape[-1]
    label_band = max(6, s // 4)  # room above each synthetic row for its distance labels
    mosaic, tops = _mosaic(cells, gap=2, row_gaps=[label_band if r % 2 == 0 else 2 for r in range(len(cells))])
    fig, ax = _picture(mosaic, 1.0, len(cells), per_row)
    for i, (_, _, dist) in enumerate(pairs):
        r, c = 2 * (i // per_row), i % per_row
        ax.text((c + 0.5) * (s + 2), tops[r] - 1, f"d={dist:.3g}", ha="center", va="bottom", fontsize=7,
                color=SYNTH if dist < threshold else "black")  # fmt: skip
    ax.set_yticks([t + s / 2 for t in tops])
    ax.set_yticklabels(["synthetic", lower] * (len(cells) // 2), fontsize=8)
    ax.tick_params(length=0)
    return encode(fig)


def _hist(ax: Any, values: np.ndarray, bins: np.ndarray, color: str, label: str, density: bool) -> None:
    """A filled step histogram as one artist (`ax.hist` draws a patch per bar, which is slow)."""
    counts, edges = np.histogram(values, bins=bins, density=density)
    ax.stairs(counts, edges, fill=True, alpha=0.45, color=color, label=label)
    ax.stairs(counts, edges, color=color, linewidth=1)


def distance_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray, float, float]]) -> str | None:
    """Per feature space: distances to the closest training image, synthetic vs held-out real images,
    with the held-out 1st and 5th percentiles."""
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.3), squeeze=False)
    for ax, (title, (syn, held, p1, p5)) in zip(axes[0], panels.items(), strict=True):
        hi = float(np.percentile(np.concatenate([syn, held]), 99.5)) or 1.0
        bins = np.linspace(0, hi, 50)
        _hist(ax, held, bins, REAL, f"held-out real (n={len(held)})", density=True)
        _hist(ax, syn, bins, SYNTH, f"synthetic (n={len(syn)})", density=True)
        for value, style, name in ((p1, "-", "held-out 1st pct"), (p5, "--", "held-out 5th pct")):
            ax.axvline(value, color="black", linestyle=style, linewidth=1, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("distance to the closest training image")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return encode(fig)


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> str | None:
    """Membership-inference ROC of each attack: training members vs held-out non-members.
    `curves`: name -> (member scores, non-member scores (higher = "member"), AUROC)."""
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, (members, non_members, auc) in curves.items():
        y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([members, non_members]))
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate (held-out flagged as member)")
    ax.set_ylabel("true positive rate (training image flagged)")
    ax.set_title("membership inference ROC", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    fig.tight_layout()
    return encode(fig)


def reid_scores(scores: np.ndarray, thresholds: Mapping[str, float]) -> str | None:
    """Best same-patient score of each synthetic image over all training images, with the thresholds
    calibrated on held-out patients."""
    if scores is None or len(scores) == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    _hist(ax, scores, np.linspace(float(np.min(scores)), float(np.max(scores)) + 1e-9, 41), SYNTH,
          f"synthetic (n={len(scores)})", density=False)
    for (name, value), style in zip(thresholds.items(), ("-", "--", ":"), strict=False):
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=name)
    ax.set_xlabel("best same-patient score against the training patients")
    ax.set_ylabel("images")
    ax.set_title("re-identification: linkage scores", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return encode(fig)


def intensity(real: np.ndarray, synthetic: np.ndarray) -> str | None:
    """Pixel-intensity distributions (probability per bin, log scale)."""
    if real is None or synthetic is None:
        return None
    x = (np.arange(len(real)) + 0.5) / len(real)
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(x, real, color=REAL, label="real (training split)")
    ax.plot(x, synthetic, color=SYNTH, label="synthetic")
    ax.set_yscale("log")
    ax.set_xlabel("pixel intensity")
    ax.set_ylabel("share of pixels")
    ax.set_title("intensity histograms", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return encode(fig)


def utility_roc(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], per_row: int = 4) -> str | None:
    """One panel per class: ROC of the TRTR / TSTR / augmented classifiers on the same real test images.
    `curves`: class -> setting -> (0/1 labels, scores); the legend gives each curve's AUROC."""
    if not curves:
        return None
    n = len(curves)
    cols = min(n, per_row)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.2 * rows), squeeze=False)
    for i, (ax, (name, settings)) in enumerate(zip(axes.flat, curves.items(), strict=False)):
        for setting, (y, score) in settings.items():
            fpr, tpr, _ = roc_curve(y, score)
            ax.plot(fpr, tpr, color=SETTING_COLORS.get(setting), linewidth=1.3,
                    label=f"{setting.upper()} {roc_auc_score(y, score):.3f}")  # fmt: skip
        y = next(iter(settings.values()))[0]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{name} ({len(y)} images, {int(np.sum(y))} positive)", fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("true positive rate", fontsize=8)
        if i + cols >= n:  # nothing drawn below this panel
            ax.set_xlabel("false positive rate", fontsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return encode(fig)


def utility_forest(utility: Mapping[str, Any]) -> str | None:
    """Per-class AUROC with 95% CIs for the three training settings, on the same held-out real patients."""
    if "trtr" not in utility:
        return None
    classes = list(utility["trtr"]["classes"])
    rows = classes + ["mean"]
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(rows) + 1.0))
    for k, setting in enumerate(("trtr", "tstr", "augmented")):
        res = utility[setting]
        ys, xs, lo, hi = [], [], [], []
        for i, name in enumerate(rows):
            entry = res["classes"][name] if name != "mean" else {
                "auroc": res["mean_auroc"], "ci_low": res.get("mean_ci_low"), "ci_high": res.get("mean_ci_high")}  # fmt: skip
            value = entry.get("auroc")
            if value is None or not np.isfinite(value):
                continue
            ys.append(len(rows) - 1 - i + (1 - k) * 0.22)
            xs.append(value)
            low, high = entry.get("ci_low"), entry.get("ci_high")
            lo.append(value - low if low is not None and np.isfinite(low) else 0)
            hi.append(high - value if high is not None and np.isfinite(high) else 0)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, color=SETTING_COLORS[setting],
                    label=SETTING_NAMES[setting])  # fmt: skip
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows[::-1], fontsize=8)
    ax.set_xlabel("AUROC on held-out real patients (95% CI)")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.06), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return encode(fig)
