"""Saliency agreement (Grad-CAM of a real-trained vs a synthetic-trained classifier) on tiny models whose
evidence region is known by construction: a model that can only see the left half of an image against one
that can only see the right half must disagree; a model against its own copy must agree fully."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medsyn.errors import DataError
from medsyn.evaluate.saliency import (
    NO_POSITIVE,
    agreement,
    baseline_comparison,
    explained_class,
    gradcam_maps,
    saliency_agreement,
    save_grid,
    seed_average,
    spearman,
    top_iou,
)
from medsyn.evaluate.verdicts import (
    SALIENCY_MIN_PAIRED,
    SALIENCY_P,
    Verdict,
    saliency_below_baseline,
    saliency_verdict,
    useful_overall,
)
from medsyn.models.classifiers import build_classifier
from medsyn.report.saliency import reading, saliency_section

SIZE = 16


class HalfView(nn.Module):
    """Sees only one half of the image: x * mask -> 1x1 conv -> ReLU -> global pool -> linear (2 classes)."""

    def __init__(self, side: str) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., : SIZE // 2] = 1 if side == "left" else 0
        mask[..., SIZE // 2 :] = 1 if side == "right" else 0
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(1, 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x * self.mask)).mean((2, 3)))


def _images(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(20, 255, (n, 1, SIZE, SIZE), dtype=np.uint8)


def _labels(n: int = 12) -> np.ndarray:
    labels = np.zeros((n, 2), dtype=np.float32)
    labels[: n // 2, 0] = 1  # half "A", half with no positive label
    return labels


def test_models_that_look_at_different_halves_disagree_and_a_copy_agrees():
    images, labels = _images(), _labels()
    left, right = HalfView("left"), HalfView("right")
    same = saliency_agreement(left, HalfView("left"), images, labels, ["A", "B"])
    assert np.allclose(same.spearman, 1.0) and np.allclose(same.iou, 1.0)
    other = saliency_agreement(left, right, images, labels, ["A", "B"], top_fraction=0.25)
    assert np.all(other.iou == 0.0) and np.all(other.spearman < 0)
    assert other.real_maps[:, :, SIZE // 2 :].max() == 0 and other.synthetic_maps[:, :, : SIZE // 2].max() == 0
    summary = other.summary()
    assert summary["images"] == 12 and summary["undefined"] == 0
    assert set(summary["per_group"]) == {"A", NO_POSITIVE} and summary["per_group"]["A"]["n"] == 6
    assert summary["per_group"]["A"]["defined"] == 6
    assert summary["overall"]["iou_mean"] == 0.0 and summary["iou_chance"] == pytest.approx(0.25 / 1.75)


def test_gradcam_on_medsyn_classifiers_leaves_the_models_unchanged(tmp_path):
    torch.manual_seed(0)
    real = build_classifier("smallcnn", 1, 2, SIZE)
    synth = build_classifier("smallcnn", 1, 2, SIZE)
    images = _images()
    x = torch.from_numpy(images).float() / 255
    before = real.eval()(x).detach().clone()
    result = saliency_agreement(real, synth, images, _labels(), ["A", "B"])
    assert result.real_maps.shape == (12, SIZE, SIZE) and 0 <= result.real_maps.min() <= result.real_maps.max() <= 1
    assert torch.equal(real(x), before) and not real._forward_hooks
    assert all(m.inplace for m in real.modules() if isinstance(m, nn.ReLU))
    assert np.isfinite(result.spearman).sum() + result.summary()["undefined"] == 12
    path = save_grid(result, images, tmp_path / "grid.png", n=4, names=("seed 0", "seed 1"))
    assert Image.open(path).size[1] > Image.open(path).size[0]  # 4 rows of 3 panels


def test_agreement_measures_and_explained_class():
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert spearman(a, a) == 1.0 and spearman(a, -a) == -1.0 and math.isnan(spearman(a, np.zeros((4, 4))))
    assert top_iou(a, a, 0.25) == 1.0 and top_iou(a, -a, 0.25) == 0.0
    assert top_iou(a, a.T, 0.25) == pytest.approx(1 / 7)  # top 4: rows 3 vs columns 3 share one pixel
    labels = np.array([[0, 1, 1], [0, 0, 0], [np.nan, 0, 1]], dtype=np.float32)
    logits = np.array([[0, 0, 9], [0, 5, 1], [9, 0, 0]], dtype=float)
    assert explained_class(labels, logits).tolist() == [1, 1, 2]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="labels must be"):
        saliency_agreement(HalfView("left"), HalfView("left"), _images(), np.zeros((3, 2)), ["A", "B"])
    with pytest.raises(DataError, match="uint8 or float"):
        gradcam_maps(HalfView("left"), _images().astype(np.int32), np.zeros(12, dtype=int))


def _section(synthetic: nn.Module, n: int = 24) -> dict:
    """The evaluation's saliency section for a left-half reference model, `synthetic`, and a second
    left-half model as the real-vs-real baseline (it agrees fully: the strictest baseline)."""
    images, labels = _images(n), _labels(n)
    reference = HalfView("left")
    syn = saliency_agreement(reference, synthetic, images, labels, ["A", "B"])
    base = saliency_agreement(reference, HalfView("left"), images, labels, ["A", "B"])
    return baseline_comparison(syn, base)


def test_a_model_that_looks_elsewhere_than_two_real_seeds_agree_warns_and_caps_useful():
    section = _section(HalfView("right"))
    group = section["per_group"]["A"]
    assert group["paired"]["n"] == 12 and group["paired"]["spearman_gap"] > 1
    assert group["paired"]["spearman_pvalue"] < SALIENCY_P and saliency_below_baseline(group) is True
    assert section["undefined"] == {"synthetic": 0, "baseline": 0, "reference": 0} and "Wilcoxon" in section["test"]
    verdict = saliency_verdict(section)
    assert verdict.level == "warn" and "shortcuts" in verdict.reason and "confirm with another --seed" in verdict.reason
    good = Verdict("utility (TSTR vs TRTR)", "pass", "TSTR keeps 95%")
    assert useful_overall(good, verdict).level == "warn" and "shortcuts" in useful_overall(good, verdict).reason
    failed = useful_overall(replace(good, level="fail"), verdict)
    assert failed.level == "fail" and "shortcuts" in failed.reason  # never raises a verdict, but is named
    assert useful_overall(replace(good, level="n/a"), verdict).level == "n/a"
    assert "shortcuts" in reading("A", group) and "clearly less" in reading("A", group)


def test_a_model_that_looks_where_the_real_ones_look_passes_and_never_makes_useful_pass():
    section = _section(HalfView("left"))
    assert all(saliency_below_baseline(g) is False for g in section["per_group"].values())
    verdict = saliency_verdict(section)
    assert verdict.level == "pass" and "not clearly below" in verdict.reason
    weak = Verdict("utility (TSTR vs TRTR)", "warn", "TSTR keeps 60%")
    assert useful_overall(weak, verdict).level == "warn"  # a PASS here cannot lift Useful?
    good = Verdict("utility (TSTR vs TRTR)", "pass", "TSTR keeps 95%")
    assert useful_overall(good, Verdict("feature importance (Grad-CAM)", "n/a", "off")).level == "pass"
    assert "about as much" in reading("A", section["per_group"]["A"])
    chance = Verdict("utility (TSTR vs TRTR)", "n/a", "the classifier trained on real images reaches only 0.57")
    unjudged = saliency_verdict(section, chance)  # a near-chance real-trained model's maps are no reference
    assert unjudged.level == "n/a" and "no reference to agree with" in unjudged.reason and "0.57" in unjudged.reason
    assert saliency_verdict(section, good).level == "pass"


def test_too_few_defined_maps_are_not_assessed():
    section = _section(HalfView("right"), n=12)  # 6 images per group, fewer than SALIENCY_MIN_PAIRED
    assert SALIENCY_MIN_PAIRED > 6 and saliency_verdict(section).level == "n/a"
    assert "only 6 images where every map is defined" in reading("A", section["per_group"]["A"])
    assert saliency_verdict({"skipped": "switched off"}).level == "n/a"
    # a real-trained model without positive evidence anywhere: nothing to agree with, and the reason says why
    flat, maps = np.zeros((24, SIZE, SIZE)), np.random.default_rng(0).random((24, SIZE, SIZE))
    groups, targets = ["A"] * 24, np.zeros(24, dtype=int)
    weak = baseline_comparison(agreement(flat, maps, targets, groups, ["A"]), agreement(flat, maps, targets, groups, ["A"]))
    assert weak["undefined"]["reference"] == 24 and weak["per_group"]["A"]["reference_undefined"] == 24
    verdict = saliency_verdict(weak)
    assert verdict.level == "n/a" and "real-trained model's own map is constant for 24 of 24" in verdict.reason
    assert "little to agree with" in reading("A", weak["per_group"]["A"])


def test_the_grid_can_show_the_baseline_column(tmp_path):
    images, labels = _images(), _labels()
    reference = HalfView("left")
    syn = saliency_agreement(reference, HalfView("right"), images, labels, ["A", "B"])
    base = saliency_agreement(reference, HalfView("left"), images, labels, ["A", "B"])
    path = save_grid(syn, images, tmp_path / "grid.png", n=2, baseline=("2nd real seed", base))
    width, height = Image.open(path).size
    assert width > height  # 2 rows of 4 panels
    with pytest.raises(DataError, match="share the first model"):
        save_grid(syn, images, tmp_path / "bad.png", baseline=("other", saliency_agreement(
            HalfView("right"), reference, images, labels, ["A", "B"])))  # fmt: skip


def test_report_section_reads_the_numbers_and_leaves_the_grid_out_without_real_images():
    section = _section(HalfView("right"))
    section.update(models={"reference": "TRTR seed 0", "synthetic": "TSTR seed 0", "baseline": "TRTR seed 1"},
                   layer="the last ReLU", explained_class="first positive", verdict=saliency_verdict(section).to_dict())
    shared = saliency_section({"saliency": section}, None, real_images=False)
    assert "Grid left out" in shared and "clearly less than two real-trained models agree" in shared
    assert "WARN" in shared and "TRTR seed 1" in shared and "<img" not in shared
    assert 'alt="saliency grid"' in saliency_section({"saliency": section}, "aGVsbG8=", real_images=True)
    assert "Not assessed: switched off" in saliency_section({"saliency": {"skipped": "switched off"}}, None, True)
    assert saliency_section({}, None, True) == ""  # a metrics.json from before the stage existed


def test_seed_average_averages_defined_agreement_per_image_and_the_caveat_follows_the_seeds():
    rng = np.random.default_rng(0)
    ref, a, b = (rng.random((4, SIZE, SIZE)) for _ in range(3))
    targets, groups = np.zeros(4, dtype=int), ["A"] * 4
    flat = b.copy()
    flat[0] = 0  # one model's map undefined on image 0: the average uses the other model's there
    ra, rb = agreement(ref, a, targets, groups, ["A"]), agreement(ref, flat, targets, groups, ["A"])
    avg = seed_average([ra, rb])
    assert avg.spearman[0] == ra.spearman[0] and np.allclose(avg.spearman[1:], (ra.spearman[1:] + rb.spearman[1:]) / 2)
    assert seed_average([ra]) is ra and np.array_equal(avg.synthetic_maps, ra.synthetic_maps)
    with pytest.raises(DataError, match="same reference maps"):
        seed_average([ra, agreement(a, b, targets, groups, ["A"])])
    section = _section(HalfView("right"))
    assert "confirm with another --seed" in saliency_verdict(section).reason  # no model_seeds: one seed
    section["model_seeds"] = {"synthetic": 3, "baseline": 2}
    verdict = saliency_verdict(section)
    assert verdict.level == "warn" and "confirm with another --seed" not in verdict.reason
