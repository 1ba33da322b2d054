"""Evaluation settings: the quick / full defaults, YAML overrides checked key by key, and the device.

    s = EvalSettings.make(quick=True, seed=0, device="cpu", progress=False, overrides={"classifier": {"epochs": 10}})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medsyn.errors import ConfigError
from medsyn.evaluate.classifier import ClassifierConfig
from medsyn.evaluate.config import coerce_config
from medsyn.evaluate.privacy.reid import ReidConfig
from medsyn.evaluate.saliency import SaliencyConfig
from medsyn.evaluate.segmentation import SegmentationConfig
from medsyn.evaluate.utility import UtilityConfig
from medsyn.train.trainer import wants_cuda


@dataclass
class EvalSettings:
    """Everything that decides the numbers; `quick` picks small models and few epochs (CPU-friendly)."""

    quick: bool = False
    seed: int = 0
    device: str = "cpu"
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    reid: ReidConfig = field(default_factory=ReidConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prdc_k: int = 5
    pixel_size: int = 64  # pixel-space privacy checks work on images area-downsampled to at most this
    n_closest: int = 16
    samples_per_class: int = 6

    @classmethod
    def make(
        cls, quick: bool, seed: int, device: str, progress: bool, overrides: Mapping[str, Any] | None = None
    ) -> EvalSettings:
        """Defaults for quick / full mode, then `overrides` ({'classifier': {...}, 'utility': {...},
        'reid': {...}, 'saliency': {...}, 'segmentation': {...}, other fields}); unknown keys are a ConfigError."""
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ConfigError(f"evaluation settings must be a mapping, got {overrides!r}")
        over = dict(overrides or {})

        def section(key: str) -> dict[str, Any]:
            value = over.pop(key, None) or {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"evaluation setting {key!r} must be a mapping, got {value!r}")
            return dict(value)

        clf = ClassifierConfig(
            model="smallcnn" if quick else "densenet121", epochs=4 if quick else 20,
            patience=2 if quick else 5, seed=seed, device=device, progress=progress,
            workers=min(8, os.cpu_count() or 1) if device == "cuda" else 0,
        )  # fmt: skip
        clf = coerce_config(ClassifierConfig, {**asdict(clf), **section("classifier")})
        utility = coerce_config(UtilityConfig, {
            "classifier": clf, "seeds": [seed] if quick else [seed, seed + 1, seed + 2],
            "n_bootstrap": 200 if quick else 1000, "bootstrap_seed": seed, **section("utility"),
        })  # fmt: skip
        reid = ReidConfig(
            encoder="smallcnn" if quick else clf.model, epochs=4 if quick else 20,
            steps_per_epoch=25 if quick else 100, patience=2 if quick else 5, seed=seed, device=device,
            progress=progress,
        )  # fmt: skip
        reid = coerce_config(ReidConfig, {**asdict(reid), **section("reid")})
        # Grad-CAM agreement on this many real test images (0: off); quick explains fewer
        saliency = coerce_config(SaliencyConfig, {"images": 100 if quick else 300, **section("saliency")})
        # image + mask sets: the U-Nets of the segmentation utility
        segmentation = coerce_config(SegmentationConfig, {"epochs": 10 if quick else 30, "patience": 3 if quick else 5,
                                                          "seed": seed, "device": device, "progress": progress,
                                                          **section("segmentation")})  # fmt: skip
        nested = {"quick", "seed", "device", "utility", "reid", "saliency", "segmentation"}
        known = {f for f in cls.__dataclass_fields__} - nested
        unknown = sorted(set(over) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s) {unknown}; expected some of {sorted(known)}")
        return coerce_config(cls, {"quick": quick, "seed": seed, "device": device, "utility": utility, "reid": reid,
                                  "saliency": saliency, "segmentation": segmentation, **over})  # fmt: skip


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is a ConfigError."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    return "cuda" if wants_cuda(device) else "cpu"
