"""Utility evaluation: masked labels, AUROC + bootstrap CIs, early stopping, TRTR/TSTR/augmentation report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.classifier import ClassifierConfig, masked_bce, predict_logits, train_classifier
from medsyn.evaluate.data import ConcatView, LabeledImages, as_unit_tensor
from medsyn.evaluate.stats import auroc_bootstrap, bootstrap_counts, mean_auroc, weighted_auroc
from medsyn.evaluate.utility import UtilityConfig, per_class_auroc, run_utility, utility_report
from medsyn.models.classifiers import build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def easy_task(n: int, seed: int, size: int = 16, k: int = 2, per_patient: int = 2, prefix: str = "p",
              signal: float = 0.5, flip: float = 0.0):
    """Class c positive -> a brighter square in corner c (+`signal`) on noise; `flip`: share of labels
    flipped after drawing the images (a worse 'synthetic' set); `per_patient` images per patient."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < 0.4).astype(np.float32)
    x = rng.uniform(0.1, 0.4, (n, 1, size, size)).astype(np.float32)
    q = size // 3
    for c in range(k):
        r0, c0 = (0, 0) if c == 0 else (size - q, size - q)
        x[labels[:, c] == 1, 0, r0:r0 + q, c0:c0 + q] += signal
    flips = rng.random(labels.shape) < flip
    labels[flips] = 1 - labels[flips]
    ids = np.array([f"{prefix}{seed}-{i // per_patient}" for i in range(n)])
    return np.clip(x, 0, 1), labels, ids


FAST = {"epochs": 4, "batch_size": 32, "patience": 2, "lr": 3e-3}


def test_masked_bce_ignores_masked_labels():
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([[1, 0, math.nan]] * 3 + [[math.nan, 1, 0]] * 3)
    loss, n = masked_bce(logits, labels)
    mask = ~torch.isnan(labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], labels[mask])
    assert n == 12 and torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[~mask] == 0) and torch.all(logits.grad[mask] != 0)


def test_per_class_auroc_matches_sklearn_and_ci_contains_point():
    rng = np.random.default_rng(0)
    n = 300
    labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
    scores = labels + rng.normal(0, 0.8, labels.shape)
    labels[rng.random(n) < 0.2, 1] = np.nan  # masked labels
    ids = np.repeat(np.arange(n // 3), 3)
    res = per_class_auroc(scores, None, labels, ids, classes=["a", "b"], n_bootstrap=300)
    for c, name in enumerate("ab"):
        m = ~np.isnan(labels[:, c])
        entry = res["classes"][name]
        assert entry["auroc"] == pytest.approx(roc_auc_score(labels[m, c], scores[m, c]), abs=1e-12)
        assert entry["ci_low"] <= entry["auroc"] <= entry["ci_high"]
        assert entry["n_masked"] == int((~m).sum())
    assert res["mean_auroc"] == pytest.approx(np.mean([res["classes"][c]["auroc"] for c in "ab"]))
    assert res["mean_ci_low"] <= res["mean_auroc"] <= res["mean_ci_high"]
    assert res["resample_unit"] == "patient" and res["n_patients"] == n // 3
    # A masked label is the same as the image not being there, for that class.
    m = ~np.isnan(labels[:, 1])
    sub = per_class_auroc(scores[m][:, 1:], None, labels[m][:, 1:], n_bootstrap=0)
    assert sub["classes"]["class_0"]["auroc"] == pytest.approx(res["classes"]["b"]["auroc"])


def test_weighted_auroc_equals_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = (rng.random(200) < 0.5).astype(float)
    w = rng.integers(0, 4, 200).astype(float)
    assert weighted_auroc(s, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))


def test_blockwise_patient_bootstrap_equals_weighted_resample():
    rng = np.random.default_rng(3)
    labels = (rng.random((90, 2)) < 0.3).astype(np.float32)
    labels[::7, 0] = np.nan
    scores = [np.round(labels + rng.normal(0, 1, labels.shape), 1) for _ in range(2)]  # ties included
    ids = np.repeat(np.arange(30), 3)
    _, reps = auroc_bootstrap(scores, labels, ids, n_bootstrap=5, seed=9)
    for b, counts in enumerate(bootstrap_counts(30, 5, 9)):
        for r in range(2):
            for c in range(2):
                m = ~np.isnan(labels[:, c])
                w = counts[np.repeat(np.arange(30), 3)][m]
                assert reps[b, r, c] == pytest.approx(roc_auc_score(labels[m, c], scores[r][m, c], sample_weight=w))


def test_single_valued_class_is_nan_with_reason():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, math.nan]], dtype=np.float32)
    res = per_class_auroc(np.random.default_rng(0).random((4, 2)), None, labels, n_bootstrap=10,
                          classes=["x", "y"])
    assert math.isnan(res["classes"]["y"]["auroc"]) and "all negative" in res["classes"]["y"]["reason"]
    assert res["mean_over"] == ["x"] and res["resample_unit"] == "image"


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_correlated_images():
    rng = np.random.default_rng(2)
    y = (rng.random(40) < 0.5).astype(np.float32)
    s = y + rng.normal(0, 1.0, 40)
    labels, scores = np.repeat(y, 8)[:, None], np.repeat(s, 8)[:, None]  # 8 identical images per patient
    ids = np.repeat(np.arange(40), 8)
    by_image = per_class_auroc(scores, None, labels, n_bootstrap=400)
    by_patient = per_class_auroc(scores, None, labels, ids, n_bootstrap=400)
    width = [r["mean_ci_high"] - r["mean_ci_low"] for r in (by_image, by_patient)]
    assert width[1] > 1.8 * width[0]


def test_early_stopping_restores_best_epoch():
    x, y, _ = easy_task(160, 0)
    vx, vy, _ = easy_task(60, 1)
    vy = vy[np.random.default_rng(3).permutation(len(vy))]  # unrelated val labels: val AUROC wanders
    cfg = ClassifierConfig(epochs=8, batch_size=32, patience=2, lr=1e-2, seed=1)
    model, hist = train_classifier(x, y, vx, vy, cfg)
    aucs = [h["val_mean_auroc"] for h in hist["epochs"]]
    assert hist["best_epoch"] == int(np.argmax(aucs)) + 1
    assert hist["best_epoch"] < len(aucs) and hist["stopped_early"]
    assert mean_auroc(predict_logits(model, vx), vy) == pytest.approx(hist["best_val_mean_auroc"])
    model2, hist2 = train_classifier(x, y, vx, vy, cfg)  # deterministic
    assert hist2["epochs"] == hist["epochs"]


def test_train_classifier_with_masked_labels_and_uint8():
    x, y, _ = easy_task(96, 4)
    vx, vy, _ = easy_task(48, 5)
    y[:, 1] = np.nan  # a class without any training label
    _, hist = train_classifier((x * 255).astype(np.uint8), y, vx, vy, {**FAST, "epochs": 2})
    assert all(np.isfinite(h["train_loss"]) for h in hist["epochs"])


def test_utility_report_easy_task_and_ratios():
    tr, va, te = (easy_task(n, seed, signal=0.12) for n, seed in ((128, 10), (48, 11), (64, 12)))
    synth = easy_task(96, 13, prefix="s", signal=0.12, flip=0.3)[:2]
    cfg = UtilityConfig(classifier=FAST, seeds=[0, 1], n_bootstrap=100, uncertainty_policy="ignore")
    run = run_utility(LabeledImages(*tr, classes=["a", "b"]), va, te, synth, cfg)  # utility_report = run.report
    rep = run.report
    trtr, tstr, aug = (rep[s]["mean_auroc"] for s in ("trtr", "tstr", "augmented"))
    assert trtr > 0.7 and tstr > 0.5 and tstr != trtr  # a worse synthetic set: a non-trivial ratio
    assert rep["ratio"]["tstr_over_trtr"]["value"] == pytest.approx(tstr / trtr)
    assert rep["ratio"]["tstr_over_trtr_above_chance"]["value"] == pytest.approx((tstr - 0.5) / (trtr - 0.5))
    gain = rep["augmentation_gain"]["per_class"]["a"]["gain"]
    auroc_a = {s: rep[s]["classes"]["a"]["auroc"] for s in ("trtr", "augmented")}
    assert gain == pytest.approx(auroc_a["augmented"] - auroc_a["trtr"])
    assert rep["augmentation_gain"]["mean"] == pytest.approx(aug - trtr)
    a = rep["trtr"]["classes"]["a"]
    assert len(a["per_seed"]) == 2 and a["std"] >= 0 and a["ci_low"] <= a["ci_high"]
    assert rep["uncertainty_policy"] == "ignore" and rep["seeds"] == [0, 1] and rep["n_seeds"] == 2
    assert rep["counts"]["n_synthetic_images"] == 96 and rep["counts"]["n_real_test_patients"] == 32
    assert rep["classes"] == ["a", "b"] and rep["resample_unit"] == "patient"
    # The trained models and their real-test scores come back, and reproduce the reported AUROCs.
    assert run.classes == ["a", "b"] and run.seeds == [0, 1] and np.array_equal(run.test_labels, te[1])
    for setting in ("trtr", "tstr", "augmented"):
        assert len(run.models[setting]) == 2 and run.scores[setting].shape == (2, 64, 2)
        assert [i["best_epoch"] for i in run.training[setting]] == [t["best_epoch"] for t in rep[setting]["training"]]
        for r, model in enumerate(run.models[setting]):
            np.testing.assert_array_equal(predict_logits(model, te[0]), run.scores[setting][r])
            for c, name in enumerate("ab"):
                auc = weighted_auroc(run.scores[setting][r][:, c], te[1][:, c])
                assert auc == pytest.approx(rep[setting]["classes"][name]["per_seed"][r])
    assert run.training["trtr"][0]["config"]["seed"] == 0 and run.models["trtr"][0] is not run.models["trtr"][1]


def test_utility_report_refuses_bad_inputs():
    tr, va, te = easy_task(40, 20), easy_task(20, 21), easy_task(20, 22)
    synth = easy_task(20, 23)[:2]
    with pytest.raises(DataError, match="class set mismatch"):
        utility_report(LabeledImages(*tr, classes=["a", "b"]), va, te,
                       LabeledImages(*synth, classes=["a", "c"]))
    few = (te[0], np.where(np.arange(20)[:, None] < 2, 1, 0).astype(np.float32).repeat(2, 1), te[2])
    with pytest.raises(DataError, match="too few test positives"):
        utility_report(tr, va, few, synth)
    with pytest.raises(DataError, match="patient"):
        utility_report(tr, va, (te[0], te[1], tr[2][:20]), synth)
    with pytest.raises(ConfigError, match="unknown"):
        utility_report(tr, va, te, synth, {"classifer": {}})


def test_images_must_be_unit_range_and_concat_mixes_dtypes():
    with pytest.raises(DataError, match=r"\(x \+ 1\) / 2"):
        as_unit_tensor(np.full((1, 1, 4, 4), -0.5, np.float32))
    real = np.full((2, 1, 4, 4), 255, np.uint8)
    synth = np.full((3, 1, 4, 4), 0.25, np.float32)
    both = ConcatView([real, synth])[np.array([4, 0])]
    assert both.dtype == np.float32 and both[0].max() == 0.25 and both[1].max() == 1.0
    f64 = ConcatView([real, synth.astype(np.float64)])[np.array([4, 0])]  # only uint8 parts are scaled
    assert f64[0].max() == 0.25 and f64[1].max() == 1.0


def test_classifiers_expose_features():
    x = torch.rand(2, 1, 32, 32)
    for name, dim in (("smallcnn", 128), ("densenet121", 1024)):
        net = build_classifier(name, 1, 3, 32).eval()
        assert net.features(x).shape == (2, dim) and net(x).shape == (2, 3) and net.feature_dim == dim
    assert build_classifier("smallcnn", 1, 0, 16)(torch.rand(2, 1, 16, 16)).shape == (2, 128)
    with pytest.raises(ConfigError, match="at least 32"):
        build_classifier("densenet121", 1, 3, 16)
    with pytest.raises(ConfigError, match="unknown classifier"):
        build_classifier("resnet", 1, 3, 32)


def test_from_prepared_reads_one_split_lazily():
    import pandas as pd

    class Prepared:  # the parts of medsyn.data.cache.PreparedDataset that from_prepared uses
        classes = ["a"]
        images = np.arange(6 * 16, dtype=np.uint8).reshape(6, 1, 4, 4)
        labels = np.array([[1], [0], [np.nan], [1], [0], [1]], np.float32)
        index = pd.DataFrame({"row": range(6), "patient_id": list("xxyyzz"), "split": ["train", "test"] * 3})

        def rows(self, split):
            return np.flatnonzero(self.index["split"].to_numpy() == split)

    data = LabeledImages.from_prepared(Prepared(), "test")
    assert len(data) == 3 and data.classes == ["a"] and list(data.patient_ids) == ["x", "y", "z"]
    assert np.array_equal(data.images[np.array([2, 0])], Prepared.images[[5, 1]])
    assert np.array_equal(data.labels, Prepared.labels[[1, 3, 5]])
