"""The feature backbone and the models an evaluation keeps.

The default feature space is the penultimate layer of the utility stage's first-seed TRTR classifier (trained
on real `train`; trained here with the same recipe only when the utility stage was skipped); `--features`
gives a local TorchXRayVision DenseNet121 or Inception-v3 weights file instead. The TRTR classifier and the
re-identification network are saved to OUT/models for reuse (`load_classifier`, `load_reid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsyn.data.cache import PreparedDataset
from medsyn.errors import ConfigError
from medsyn.evaluate.classifier import ClassifierConfig, train_classifier
from medsyn.evaluate.data import LabeledImages
from medsyn.evaluate.features import ClassifierFeatures, FeatureExtractor, TorchXRayVisionFeatures, load_local_weights
from medsyn.evaluate.inception import InceptionFeatures
from medsyn.evaluate.privacy.reid import ReidModel, save_reid
from medsyn.io import atomic_dir
from medsyn.models.classifiers import Classifier, save_classifier


def external_features(path: str | Path, device: str, progress: bool) -> FeatureExtractor:
    """A local weights file as a feature extractor: its keys tell Inception-v3 (FID) from TorchXRayVision."""
    state, _ = load_local_weights(path, "feature", "pass the path of a local .safetensors/.pt state dict")
    if any(k.startswith("Mixed_") for k in state):
        return InceptionFeatures(path, device=device, progress=progress)
    if any("denseblock" in k for k in state):
        return TorchXRayVisionFeatures(path, device=device, progress=progress)
    raise ConfigError(
        f"{path}: not an Inception-v3 (pytorch-fid) or TorchXRayVision DenseNet121 state dict; "
        "leave --features out to use a classifier trained on the real training split"
    )


@dataclass
class RealClassifier:
    """The classifier trained on real `train` behind the default feature space and OUT/models/classifier."""

    model: Classifier
    info: dict[str, Any]  # train_classifier's info: history and config
    classes: list[str]
    origin: str  # which model this is, in words

    def features(self) -> ClassifierFeatures:
        cfg, info = self.info["config"], self.info
        label = (
            f"{self.origin}; trained here on the real training split ({info['n_train_images']} images, best epoch "
            f"{info['best_epoch']}, val mean AUROC {info['best_val_mean_auroc']:.3f}, seed {cfg['seed']})"
        )
        size = int(self.model.arch["size"])
        return ClassifierFeatures(self.model, name=f"{cfg['model']}-real-train-{size}px", weights=label,
                                  device=cfg["device"], progress=cfg["progress"])  # fmt: skip

    def describe(self) -> dict[str, Any]:
        keys = ("best_epoch", "best_val_mean_auroc", "stopped_early", "n_train_images")
        return {"model": self.origin, "seed": self.info["config"]["seed"], "classes": self.classes,
                **{k: self.info[k] for k in keys}}  # fmt: skip


TRTR_ORIGIN = "the first-seed TRTR classifier of the utility stage (reused, not retrained)"
SHARE_NOTE = ("trained on real patient images (they may memorise some): share them only where the real data may "
              "be shared")  # fmt: skip


@dataclass
class SavedModels:
    """The models worth keeping after a run, written to OUT/models by `save`."""

    classifier: RealClassifier | None
    reid: ReidModel | None
    ds: PreparedDataset

    def save(self, folder: Path) -> dict[str, Any]:
        """Write folder/classifier and folder/reid (whichever exist; the folder is replaced as a whole, so
        no model of an earlier run survives) and return their metrics.json entries."""
        data = {"spec": self.ds.spec, "content_hash": self.ds.meta.get("content_hash"), "size": self.ds.size}
        entries: dict[str, Any] = {"note": SHARE_NOTE}
        with atomic_dir(folder) as tmp:
            if self.classifier is not None:
                c = self.classifier
                what = (f"{c.info['config']['model']} classifier, {c.origin}: trained on the real training split, "
                        f"early stopping on real val; input float (N, {c.model.arch['in_channels']}, "
                        f"{c.model.arch['size']}, {c.model.arch['size']}) in [0, 1], one logit per class")  # fmt: skip
                save_classifier(c.model, tmp / "classifier", extra={
                    "classes": c.classes, "what": what, "data": data,
                    "training": {k: v for k, v in c.info.items() if k != "config"}, "config": c.info["config"],
                })  # fmt: skip
                entries["classifier"] = {"path": str(folder / "classifier"), "what": what, "classes": c.classes,
                                         "load": "medsyn.models.classifiers.load_classifier(path)"}  # fmt: skip
            if self.reid is not None:
                h = self.reid.history
                what = (f"siamese re-identification network ({self.reid.cfg.encoder} encoder, {self.reid.cfg.head} "
                        f"head) trained on {h.get('n_patients')} real training patients; same-patient logit of "
                        "two images; patient ids are not stored")  # fmt: skip
                save_reid(self.reid, tmp / "reid", extra={"what": what, "data": data})
                entries["reid"] = {"path": str(folder / "reid"), "what": what,
                                   "load": "medsyn.evaluate.privacy.reid.load_reid(path, device='cpu')"}  # fmt: skip
        return entries


def domain_classifier(train: LabeledImages, val: LabeledImages, cfg: ClassifierConfig) -> RealClassifier:
    """Only when the utility stage was skipped: the TRTR recipe (same config and seed) trained on real train."""
    model, info = train_classifier(train.images, train.labels, val.images, val.labels, cfg)
    origin = "a classifier trained with the TRTR recipe (the utility stage was skipped)"
    return RealClassifier(model, info, list(train.classes or []), origin)
