"""Privacy filter for `generate`: reject and re-draw candidates that sit too close to a training image.

Pixel space (always on): a candidate is rejected when its distance to the nearest real TRAINING image
(exact Euclidean, `PixelFeatures`: [0, 1] pixels area-downsampled to at most `pixel_size`) is below the
`percentile`-th percentile of the same distance for held-out real images (val + test: patients the
generator never saw), or is exactly 0. A genuinely new image is thus rejected about `percentile`% of
the time, a memorised copy always.

Re-identification (optional, `reid_model`): a candidate is also rejected when the siamese network's best
same-patient score against every training image exceeds the (1 - `reid_fpr`) quantile of the held-out
images' best scores (the gallery-calibrated threshold of `medsyn.evaluate.privacy.linkage.match_synthetic`).

A rejected candidate is re-drawn with the same label and a new seed derived from the generation seed, so
the same command twice writes the same files, and images that pass are those the unfiltered command
writes. More than `max_rejection` rejected candidates means the generator memorises: generation stops
with an error instead of writing a set that only hides that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medsyn.data.cache import PreparedDataset
from medsyn.errors import ConfigError, DataError, MedsynError
from medsyn.evaluate.neighbors import knn

if TYPE_CHECKING:  # the evaluation stack (MONAI, figures) is imported only when a filter is calibrated
    from medsyn.evaluate.features import PixelFeatures
    from medsyn.evaluate.privacy.reid import ReidModel

REASONS = ("pixel", "reid")
_ADVICE = "the generator looks memorising its training images: do not share it; retrain (fewer steps, augmentation)"


@dataclass(frozen=True)
class PrivacyFilter:
    """Settings of the filter (see the module docstring); `True` in `generate` means these defaults.

    `real`: a dataset spec or prepared cache folder standing for the training data when the run's own
    cache is not available (an exported generator folder). `reid_model`: a folder written by
    `medsyn.evaluate.privacy.reid.save_reid`, or a trained `ReidModel`.
    """

    percentile: float = 1.0
    pixel_size: int = 64
    reid_model: str | os.PathLike[str] | ReidModel | None = None
    reid_fpr: float = 0.01
    max_rounds: int = 10
    max_rejection: float = 0.5
    real: str | os.PathLike[str] | None = None

    def validate(self) -> None:
        """Reject impossible settings before anything is loaded."""
        if not 0 <= self.percentile < 100:
            raise ConfigError(f"privacy filter: percentile must be in [0, 100), got {self.percentile}")
        if self.pixel_size < 1:
            raise ConfigError(f"privacy filter: pixel_size must be positive, got {self.pixel_size}")
        if not 0 < self.reid_fpr < 1:
            raise ConfigError(f"privacy filter: reid_fpr must be in (0, 1), got {self.reid_fpr}")
        if self.max_rounds < 0:
            raise ConfigError(f"privacy filter: max_rounds must be >= 0, got {self.max_rounds}")
        if not 0 < self.max_rejection <= 1:
            raise ConfigError(f"privacy filter: max_rejection must be in (0, 1], got {self.max_rejection}")
        if isinstance(self.reid_model, str | os.PathLike) and not Path(self.reid_model).is_dir():
            raise ConfigError(f"privacy filter: re-id model folder {self.reid_model} does not exist")

    def settings(self) -> dict[str, Any]:
        """The settings for the manifest (no paths: a synthetic set carries nothing about the real data)."""
        return {"percentile": self.percentile, "pixel_size": self.pixel_size, "max_rounds": self.max_rounds,
                "max_rejection": self.max_rejection, "reid": self.reid_model is not None,
                "reid_fpr": self.reid_fpr if self.reid_model is not None else None}  # fmt: skip


def as_filter(value: PrivacyFilter | bool | None) -> PrivacyFilter | None:
    """`generate`'s privacy_filter argument: None/False = off, True = defaults."""
    if value is None or value is False:
        return None
    return PrivacyFilter() if value is True else value


@dataclass
class _Reid:
    """A re-id model with its embedded training gallery and calibrated score threshold."""

    model: ReidModel
    gallery: torch.Tensor
    threshold: float
    entry: dict[str, Any]

    def scores(self, images: np.ndarray) -> np.ndarray:
        return self.model.best_match(self.model.embed(images), self.gallery)[0]


@dataclass
class Screen:
    """A calibrated filter: screens candidate batches and counts what it rejected."""

    cfg: PrivacyFilter
    features: PixelFeatures
    train: np.ndarray  # float64 (N, D) pixel features of the training images
    threshold: float
    groups: list[str]  # classes, plus 'No Finding' where the run has that group
    entry: dict[str, Any]  # calibration facts for the manifest
    device: torch.device
    reid: _Reid | None = None
    drawn: np.ndarray = field(init=False)  # candidates per label group (multi-hot ones count in each)
    rejected: np.ndarray = field(init=False)  # rejected candidates per label group
    by_reason: dict[str, int] = field(init=False)
    candidates: int = 0
    n_rejected: int = 0
    rounds_used: int = 0

    def __post_init__(self) -> None:
        self.drawn = np.zeros(len(self.groups), dtype=np.int64)
        self.rejected = np.zeros(len(self.groups), dtype=np.int64)
        self.by_reason = dict.fromkeys(REASONS if self.reid else REASONS[:1], 0)

    def _group_matrix(self, labels: np.ndarray) -> np.ndarray:
        """(n, groups) 0/1: each candidate's classes, and No Finding for all-zero labels."""
        pos = labels.astype(bool)
        if len(self.groups) > labels.shape[1]:
            pos = np.concatenate([pos, ~pos.any(axis=1, keepdims=True)], axis=1)
        return pos.astype(np.int64)

    def check(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Which candidates to reject (bool); counts them per reason and label group."""
        d = knn(self.features(images), self.train, 1, device=self.device).distances[:, 0]
        reject = (d < self.threshold) | (d == 0)
        self.by_reason["pixel"] += int(reject.sum())
        if self.reid is not None:
            linked = self.reid.scores(images) > self.reid.threshold
            self.by_reason["reid"] += int(linked.sum())
            reject |= linked
        groups = self._group_matrix(labels)
        self.drawn += groups.sum(axis=0)
        self.rejected += groups[reject].sum(axis=0)
        self.candidates += len(images)
        self.n_rejected += int(reject.sum())
        return reject

    def screen(
        self, images: np.ndarray, labels: np.ndarray, redraw: Callable[[np.ndarray, int], np.ndarray]
    ) -> np.ndarray:
        """`images` with every rejected candidate replaced by a re-draw `redraw(positions, round)` (rounds
        1..max_rounds) that passes; raises when too many are rejected or some never pass."""
        images = np.array(images)
        todo = np.arange(len(images))
        for rnd in range(self.cfg.max_rounds + 1):
            if rnd:
                images[todo] = redraw(todo, rnd)
                self.rounds_used = max(self.rounds_used, rnd)
            todo = todo[self.check(images[todo], labels[todo])]
            if len(todo) == 0:
                break
        if self.rate() > self.cfg.max_rejection:
            raise ConfigError(
                f"privacy filter rejected {self.n_rejected} of {self.candidates} candidates "
                f"({100 * self.rate():.1f}% > the {100 * self.cfg.max_rejection:g}% limit; {self._worst()}): {_ADVICE}"
            )
        if len(todo):
            raise ConfigError(
                f"privacy filter: {len(todo)} candidates were still rejected after {self.cfg.max_rounds} "
                f"re-draws ({self._worst()}): {_ADVICE}"
            )
        return images

    def rate(self) -> float:
        return self.n_rejected / self.candidates if self.candidates else 0.0

    def _worst(self) -> str:
        rates = np.divide(self.rejected, np.maximum(self.drawn, 1))
        i = int(np.argmax(rates))
        return f"most rejected: {self.groups[i]}, {100 * rates[i]:.0f}% of {int(self.drawn[i])}"

    def manifest(self) -> dict[str, Any]:
        """The manifest's "privacy_filter" entry."""
        return {
            **self.entry,
            "settings": self.cfg.settings(),
            "candidates": self.candidates,
            "rejected": self.n_rejected,
            "rejection_rate": self.rate(),
            "rejected_by": dict(self.by_reason),  # per check; a candidate may fail both
            "per_class": {
                g: {"candidates": int(d), "rejected": int(r)}
                for g, d, r in zip(self.groups, self.drawn, self.rejected, strict=True)
            },
            "rounds_used": self.rounds_used,
        }


def summary_line(entry: dict[str, Any]) -> str:
    """One line for the CLI from a manifest's "privacy_filter" entry."""
    parts = [f"pixel distance < {entry['pixel']['threshold']:.4g} (held-out p{entry['pixel']['percentile']:g})"]
    if entry.get("reid"):
        parts.append(f"re-id score > {entry['reid']['threshold']:.4g} (held-out FPR {entry['reid']['fpr']:g})")
    line = (
        f"privacy filter: rejected {entry['rejected']} of {entry['candidates']} candidates "
        f"({100 * entry['rejection_rate']:.1f}%: {' or '.join(parts)}); re-draw rounds: {entry['rounds_used']}"
    )
    if entry["real_data"]["matches_training"] is False:
        line += "; note: the real data given is not the run's training cache"
    return line


def calibrate(
    cfg: PrivacyFilter, meta: dict[str, Any], run_dir: Path, groups: list[str], device: torch.device, quiet: bool
) -> Screen:
    """Thresholds from the real data of the run in `run_dir` (run.json `meta`): training images are the
    members, val + test images the held-out calibration set."""
    from medsyn.evaluate.features import PixelFeatures
    from medsyn.evaluate.privacy import DCR_MIN_HOLDOUT, DCR_RELIABLE_HOLDOUT
    from medsyn.evaluate.utility import RowView

    ds, source = _open_real(cfg, meta, run_dir, quiet)
    recorded = meta.get("data", {}).get("content_hash")
    matches = None if recorded is None else recorded == ds.meta.get("content_hash")
    if matches is False and cfg.real is None:
        raise DataError(f"{ds.path}: the run's training cache changed since training (content hash differs); "
                        "pass --real SPEC_OR_CACHE")  # fmt: skip
    train_rows = ds.rows("train")
    held_rows = np.sort(np.concatenate([ds.rows("val"), ds.rows("test")]))
    if len(train_rows) == 0 or len(held_rows) < DCR_MIN_HOLDOUT:
        raise DataError(f"{ds.path}: the privacy filter needs training images and at least {DCR_MIN_HOLDOUT} "
                        f"held-out (val + test) images, got {len(train_rows)} and {len(held_rows)}")  # fmt: skip
    train, held = RowView(ds.images, train_rows), RowView(ds.images, held_rows)
    size = int(meta["config"]["size"])
    pixels = min(cfg.pixel_size, size, ds.size)
    features = PixelFeatures(pixels, ds.channels, device=device, progress=not quiet)
    f_train, f_held = features(train), features(held)
    features.progress = False  # candidates are screened inside the generation progress bar
    d_held = knn(f_held, f_train, 1, device=device, progress=not quiet).distances[:, 0]
    threshold = float(np.percentile(d_held, cfg.percentile))
    entry: dict[str, Any] = {
        "real_data": {"source": source, "content_hash": ds.meta.get("content_hash"), "matches_training": matches,
                      "train_images": len(train_rows), "heldout_images": len(held_rows)},
        "pixel": {"space": features.name, "implementation": features.implementation, "percentile": cfg.percentile,
                  "threshold": threshold, "calibration_images": len(held_rows),
                  "heldout_median_distance": float(np.median(d_held)),
                  "rule": "rejected when the distance to the nearest training image is below the threshold or 0"},
        "reid": None,
    }  # fmt: skip
    if len(held_rows) < DCR_RELIABLE_HOLDOUT:
        entry["pixel"]["note"] = f"only {len(held_rows)} held-out images: the threshold is poorly estimated"
    reid = None
    if cfg.reid_model is not None:
        if ds.size != size:
            raise ConfigError(f"privacy filter: the re-id check needs real images at the generator's {size} px, "
                              f"the real data has {ds.size} px")  # fmt: skip
        reid = _calibrate_reid(cfg, _load_reid(cfg.reid_model, device), train, held)
        entry["reid"] = reid.entry
    return Screen(cfg, features, f_train, threshold, groups, entry, device, reid)


def _open_real(cfg: PrivacyFilter, meta: dict[str, Any], run_dir: Path, quiet: bool) -> tuple[PreparedDataset, str]:
    """The given real data, else the cache the run trained on (prepared again from its spec if missing)."""
    from medsyn.evaluate.pipeline import open_real  # shared with `medsyn evaluate`: same cache, same splits

    tc = meta["config"]
    size = int(tc["size"])
    if cfg.real is not None:  # the run's own data location may not even parse here (another machine's path)
        known = {k: v for k, v in tc.items() if k != "data"}
        try:
            return open_real(str(cfg.real), None, None, known, lambda: size, run_dir, quiet)[0], "given"
        except MedsynError as exc:
            raise type(exc)(f"privacy filter --real {cfg.real}: {exc}") from None
    recorded = meta.get("data", {}).get("cache")
    source = recorded if recorded and (Path(recorded) / "meta.json").is_file() else str(tc["data"])
    try:
        return open_real(source, None, None, tc, lambda: size, run_dir, quiet)[0], "run training data"
    except MedsynError as exc:
        raise DataError(f"privacy filter: the run's training images are not available here ({exc}); "
                        "pass --real SPEC_OR_CACHE (the data it was trained on)") from None  # fmt: skip


def _load_reid(model: str | os.PathLike[str] | ReidModel, device: torch.device) -> ReidModel:
    from medsyn.evaluate.privacy.reid import ReidModel, load_reid

    return model if isinstance(model, ReidModel) else load_reid(model, device=device)


def _calibrate_reid(cfg: PrivacyFilter, model: ReidModel, train: Any, held: Any) -> _Reid:
    """Gallery = the training images; threshold = the (1 - fpr) quantile of held-out best-match scores."""
    gallery = model.embed(train)
    h_best = model.best_match(model.embed(held), gallery)[0]
    threshold = float(np.quantile(h_best, 1 - cfg.reid_fpr, method="higher"))
    entry = {"model_sha256": _weights_sha256(model), "encoder": model.cfg.encoder, "head": model.cfg.head,
             "fpr": cfg.reid_fpr, "threshold": threshold, "calibration_images": len(h_best),
             "heldout_fraction_above": float((h_best > threshold).mean()),
             "rule": "rejected when the best same-patient score against the training images exceeds the threshold"}  # fmt: skip
    return _Reid(model, gallery, threshold, entry)


def _weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights (names, dtypes, shapes, values), the same for a model and its saved copy."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
