"""What the report draws besides metrics.json: sample images, closest pairs, per-image distances and the
utility classifiers' real-test scores (ROC curves).

Collected once by the evaluation pipeline while the arrays are in memory; only small selections of
images are kept (a few per class, the closest pairs), never whole sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsyn.evaluate.diversity import DiversityResult
from medsyn.evaluate.intensity import HistogramDivergence
from medsyn.evaluate.privacy import DCRResult, MIAResult
from medsyn.evaluate.saliency import SaliencyResult, grid_figure
from medsyn.evaluate.utility import SETTINGS, UtilityRun
from medsyn.report import figures
from medsyn.report import segmentation as triplets

TRIPLET_ROWS = 8  # segmentation triplets shown


@dataclass
class ReportAssets:
    """Inputs of the figures; `real_images=False` keeps every real image out of the report."""

    groups: list[tuple[str, np.ndarray | None, np.ndarray]] = field(default_factory=list)
    closest: list[tuple[np.ndarray, np.ndarray | None, float]] = field(default_factory=list)
    closest_threshold: float = float("nan")
    # the closest synthetic-synthetic pairs (near-duplicates show a collapsed generator)
    synthetic_pairs: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)
    synthetic_pairs_threshold: float = float("nan")
    distances: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=dict)
    mia: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)
    intensity: tuple[np.ndarray, np.ndarray] | None = None
    reid_scores: np.ndarray | None = None
    reid_thresholds: dict[str, float] = field(default_factory=dict)
    # class -> setting -> (0/1 labels, scores) of the first-seed classifiers on the real test images
    utility_roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    # the saliency grid: reference-vs-synthetic and reference-vs-second-seed results on the same real test images
    saliency: tuple[SaliencyResult, SaliencyResult, np.ndarray] | None = None
    saliency_rows: int = 8
    # the segmentation triplets: synthetic masks, synthetic images, real training images (nearest searched)
    segmentation: tuple[np.ndarray, np.ndarray, Any] | None = None
    real_images: bool = True
    per_group: int = 6

    @classmethod
    def collect(
        cls,
        train_images: Any,
        train_labels: np.ndarray,
        syn_images: np.ndarray,
        syn_labels: np.ndarray,
        classes: list[str],
        dcrs: Mapping[str, DCRResult],
        mias: Mapping[str, MIAResult],
        hist: HistogramDivergence | None,
        reid: Mapping[str, Any],
        reid_scores: np.ndarray | None,
        real_images: bool = True,
        per_group: int = 6,
        seed: int = 0,
        utility: UtilityRun | None = None,
        negative: str = "No Finding",
        diversity: DiversityResult | None = None,
        saliency: Any = None,
        saliency_rows: int = 8,
    ) -> ReportAssets:
        """`negative`: the name of the group without a positive label (the synthetic set's negative class);
        `saliency`: the saliency stage's outcome (its grid shows real test images, so only with `real_images`)."""
        rng = np.random.default_rng(seed)

        def pick(images: Any, mask: np.ndarray) -> np.ndarray:
            rows = np.flatnonzero(mask)
            rows = np.sort(rng.choice(rows, min(per_group, len(rows)), replace=False)) if len(rows) else rows
            return np.asarray(images[rows]) if len(rows) else np.zeros((0, *syn_images.shape[1:]), np.uint8)

        groups = []
        names = [*classes, negative]
        for j, name in enumerate(names):
            real_mask = (train_labels == 0).all(1) if j == len(classes) else train_labels[:, j] == 1
            syn_mask = (syn_labels == 0).all(1) if j == len(classes) else syn_labels[:, j] == 1
            if j == len(classes) and not (real_mask.any() or syn_mask.any()):
                continue
            groups.append((name, pick(train_images, real_mask) if real_images else None, pick(syn_images, syn_mask)))
        assets = cls(groups=groups, real_images=real_images, per_group=per_group, saliency_rows=saliency_rows)
        if real_images and saliency is not None and saliency.synthetic is not None:
            assets.saliency = (saliency.synthetic, saliency.baseline, saliency.images)
        pixel = dcrs.get("pixel")
        if pixel is not None:
            assets.closest = [
                (np.asarray(syn_images[c["synthetic_index"]]),
                 np.asarray(train_images[np.array([c["train_index"]])])[0] if real_images else None,
                 float(c["distance"]))
                for c in pixel.closest
            ]  # fmt: skip
            assets.closest_threshold = pixel.threshold_p1
        if diversity is not None:
            assets.synthetic_pairs = [(np.asarray(syn_images[p["a"]]), np.asarray(syn_images[p["b"]]), p["distance"])
                                      for p in diversity.closest_pairs]  # fmt: skip
            assets.synthetic_pairs_threshold = diversity.threshold
        for key, res in dcrs.items():
            title = f"{key} space ({res.space})"
            assets.distances[title] = (res.synthetic_distances, res.holdout_distances, res.threshold_p1, res.threshold_p5)
        for res in mias.values():
            assets.mia[f"{res.attack} ({res.space})"] = (res.member_scores, res.non_member_scores, res.auroc)
        if hist is not None:
            assets.intensity = (hist.real_histogram, hist.synthetic_histogram)
        if reid_scores is not None and "matching" in reid:
            match = reid["matching"]
            assets.reid_scores = reid_scores
            assets.reid_thresholds = {"pair-level 1% FPR": match["threshold"]} | {
                f"{100 * float(fpr):g}% of held-out patients linked": v["threshold"]
                for fpr, v in match.get("gallery_calibrated", {}).items()
            }
        if utility is not None:
            assets.utility_roc = _roc_inputs(utility)
        return assets

    def figures(self, metrics: Mapping[str, Any]) -> dict[str, str | None]:
        """Every figure as base64 PNG (None when there is nothing to draw)."""
        return {
            "samples": figures.sample_grid(self.groups, self.per_group),
            "closest": figures.closest_pairs(self.closest, self.closest_threshold),
            "synthetic_pairs": figures.closest_pairs(self.synthetic_pairs, self.synthetic_pairs_threshold,
                                                     lower="nearest synthetic"),
            "distances": figures.distance_histograms(self.distances),
            "mia_roc": figures.roc_curves(self.mia),
            "reid": figures.reid_scores(self.reid_scores, self.reid_thresholds),
            "intensity": figures.intensity(*self.intensity) if self.intensity else None,
            "utility": figures.utility_forest(metrics.get("utility", {})),
            "utility_roc": figures.utility_roc(self.utility_roc),
            "saliency": self._saliency_grid(metrics),
            "segmentation": self._segmentation_grid(),
        }

    def _segmentation_grid(self) -> str | None:
        """mask | synthetic image | nearest real training image (pixel space), a row per synthetic pair."""
        if self.segmentation is None or not self.real_images:
            return None
        masks, synthetic, real = self.segmentation
        masks, synthetic = masks[:TRIPLET_ROWS], synthetic[:TRIPLET_ROWS]
        return triplets.triplet_grid(masks, synthetic, real, triplets.nearest_real(synthetic, real), TRIPLET_ROWS)

    def _saliency_grid(self, metrics: Mapping[str, Any]) -> str | None:
        """image | real-trained map | synthetic-trained map | second real seed's map, a few rows per class group."""
        if self.saliency is None:
            return None
        synthetic, baseline, images = self.saliency
        seed = int(metrics.get("settings", {}).get("seed", 0))
        fig = grid_figure(synthetic, images, self.saliency_rows, seed, ("real-trained", "synthetic-trained"),
                          baseline=("2nd real-trained seed", baseline))  # fmt: skip
        return figures.encode(fig)


def _roc_inputs(run: UtilityRun) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per class with both label values on the test set: labels and FIRST-seed scores of each setting (the
    seed of the saved TRTR model; a seed average of logits would be an ensemble, whose AUROC the tables do
    not report). Masked (NaN) labels are left out, as in the AUROC."""
    out = {}
    for c, name in enumerate(run.classes):
        keep = ~np.isnan(run.test_labels[:, c])
        y = run.test_labels[keep, c]
        if 0 < y.sum() < len(y):
            out[name] = {s: (y, run.scores[s][0, keep, c]) for s in SETTINGS}
    return out
