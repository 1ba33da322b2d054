"""What a tuning trial is scored on: the VALIDATION patients only, never the test split.

    sets = validation_sets(ds, classes, seed)     # reads ds.rows('train') and ds.rows('val'), nothing else
    scorer = Scorer(sets, ClassifierConfig(epochs=5), out / "reference")
    value = scorer.tstr(synthetic_images, synthetic_labels)

The validation patients are split once, by patient and stratified, into a *selection* half (the TSTR
classifier's early stopping, as in `medsyn evaluate`) and a *scoring* half (its AUROC is the objective),
so the score is not the maximum over epochs of the same noisy AUROC. The test split stays untouched for the
tuned config's final, unbiased evaluation: a study that selected on it would report an optimistic number.

Extras, recorded per trial: recall and coverage (Naeem et al. 2020) of the synthetic set against all
validation images, in the feature space of a classifier trained once per study on the real training split
(the evaluation's default backbone, `medsyn.evaluate`), and, with a privacy penalty, the pixel-space DCR
check against the training images with the validation images as the held-out baseline.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medsyn.data.cache import PreparedDataset
from medsyn.errors import CheckpointError, DataError
from medsyn.evaluate.classifier import ClassifierConfig, predict_logits, train_classifier
from medsyn.evaluate.data import LabeledImages, RowView
from medsyn.evaluate.features import ClassifierFeatures, PixelFeatures
from medsyn.evaluate.fidelity import compute_prdc
from medsyn.evaluate.privacy.dcr import DCR_MIN_HOLDOUT, distance_to_closest_record
from medsyn.evaluate.stats import mean_auroc
from medsyn.evaluate.verdicts import dcr_verdict
from medsyn.models.classifiers import Classifier, load_classifier, save_classifier

PRDC_K = 5
DCR_PIXELS = 32  # pixel-space DCR at up to 32 px: copies show at any size, and the search stays cheap


@dataclass
class ValidationSets:
    """The real images an objective may read: the training images (references for recall/coverage and
    DCR) and the validation patients, whole and split into a selection and a scoring half."""

    classes: list[str]
    train: LabeledImages
    val: LabeledImages
    select: LabeledImages
    score: LabeledImages
    notes: list[str] = field(default_factory=list)


def _part(ds: PreparedDataset, rows: np.ndarray, cols: list[int], name: str) -> LabeledImages:
    ids = ds.index["patient_id"].to_numpy().astype(str)[rows]
    labels = np.asarray(ds.labels)[rows][:, cols]
    return LabeledImages(RowView(ds.images, rows), labels, ids, [ds.classes[c] for c in cols], name=name)


def _scorable(labels: np.ndarray) -> bool:
    return not math.isnan(mean_auroc(np.zeros(labels.shape), labels))


def _halves(labels: np.ndarray, ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the validation images by patient, stratified by each image's rarest positive class."""
    pos = np.nan_to_num(labels, nan=0.0) > 0
    order = np.argsort(pos.sum(axis=0), kind="stable")  # rarest first
    key = np.full(len(labels), -1)
    for c in order[::-1]:
        key[pos[:, c]] = c
    splitter = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # strata smaller than 2 patients are expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        a, b = next(iter(splitter.split(np.zeros(len(labels)), key, ids)))
    return np.sort(a), np.sort(b)


def validation_sets(ds: PreparedDataset, classes: list[str], seed: int) -> ValidationSets:
    """Training and validation images of `ds` over `classes`; DataError when validation cannot score."""
    cols = [ds.classes.index(c) for c in classes]
    train = _part(ds, ds.rows("train"), cols, "real_train")
    val_rows = ds.rows("val")
    if len(val_rows) == 0:
        raise DataError(
            f"{ds.path} has no validation split: tune scores trials on validation patients, never on the test "
            "split; prepare the data with a validation fraction (medsyn data prepare --val 0.1)"
        )
    val = _part(ds, val_rows, cols, "real_val")
    if not _scorable(val.labels):
        raise DataError(
            f"{ds.path}: no class has both positive and negative validation images, so no trial can be scored"
        )
    notes = []
    if len(np.unique(val.patient_ids)) >= 4:
        a, b = _halves(val.labels, val.patient_ids, seed)
        select, score = _part(ds, val_rows[a], cols, "real_val_select"), _part(ds, val_rows[b], cols, "real_val_score")
        if len(a) and len(b) and _scorable(select.labels) and _scorable(score.labels):
            return ValidationSets(classes, train, val, select, score)
    notes.append("the validation split is too small to halve (selection / scoring): the TSTR classifier is "
                 "early-stopped and scored on the same validation images, which flatters every trial alike")  # fmt: skip
    return ValidationSets(classes, train, val, val, val, notes)


class Scorer:
    """Scores a synthetic set on the validation patients; the real-trained reference is trained once per
    study (kept in `folder`) and gives the validation TRTR and the feature space of recall/coverage."""

    def __init__(self, sets: ValidationSets, classifier: ClassifierConfig, folder: Path) -> None:
        self.sets, self.cfg, self.folder = sets, classifier, folder
        self._reference: Classifier | None = None
        self._train_pixels: np.ndarray | None = None
        self._val_pixels: np.ndarray | None = None

    def _fit(self, images: Any, labels: np.ndarray) -> tuple[Classifier, float]:
        s = self.sets
        model, _ = train_classifier(images, labels, s.select.images, s.select.labels, self.cfg)
        scores = predict_logits(model, s.score.images, self.cfg.eval_batch_size, self.cfg.amp)
        return model, mean_auroc(scores, s.score.labels)

    def reference(self) -> tuple[Classifier, float]:
        """The classifier trained on the real training split and its validation (scoring half) AUROC."""
        if self._reference is None:
            try:
                self._reference = load_classifier(self.folder, self.cfg.device)
            except CheckpointError:
                model, _ = self._fit(self.sets.train.images, self.sets.train.labels)
                save_classifier(model, self.folder, {"classes": self.sets.classes})
                self._reference = model
        scores = predict_logits(self._reference, self.sets.score.images, self.cfg.eval_batch_size, self.cfg.amp)
        return self._reference, mean_auroc(scores, self.sets.score.labels)

    def tstr(self, images: Any, labels: np.ndarray) -> float:
        """Validation TSTR: mean AUROC on the scoring half of a classifier trained on the synthetic set."""
        return self._fit(images, labels)[1]

    def fidelity(self, images: Any) -> dict[str, float]:
        """Recall and coverage of the synthetic set against all validation images (reference features)."""
        model, _ = self.reference()
        space = ClassifierFeatures(model, name="smallcnn-real-train", image_shape=tuple(self.sets.val.images.shape[1:]))
        real, syn = space(self.sets.val.images), space(images)
        if min(len(real), len(syn)) <= PRDC_K:
            return {}
        res = compute_prdc(real, syn, space, k=PRDC_K, same_n=True)
        return {"recall": res.recall, "coverage": res.coverage, "precision": res.precision, "density": res.density}

    def privacy(self, images: Any) -> dict[str, Any]:
        """Pixel-space DCR against the training images, held-out baseline = validation images."""
        val = self.sets.val
        if len(val) < DCR_MIN_HOLDOUT:
            return {"privacy": "not assessable", "privacy_note": f"fewer than {DCR_MIN_HOLDOUT} validation images"}
        size = min(DCR_PIXELS, int(val.images.shape[-1]))
        space = PixelFeatures(size, int(val.images.shape[1]))
        if self._train_pixels is None:
            self._train_pixels, self._val_pixels = space(self.sets.train.images), space(val.images)
        res = distance_to_closest_record(space(images), self._train_pixels, self._val_pixels, space)
        verdict = dcr_verdict(res)
        return {"privacy": verdict.level, "dcr_below_p1": res.fraction_below_p1, "dcr_expected_p1": res.expected_p1}


def classifier_for(cfg: ClassifierConfig, device: str, seed: int) -> ClassifierConfig:
    """The tuning classifier on the study's device and seed (the same for every trial)."""
    return replace(cfg, device=device, seed=seed, progress=False)
