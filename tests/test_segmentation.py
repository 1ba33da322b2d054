"""Segmentation utility: U-Nets on real / synthetic / both pairs, Dice and F1 with paired patient-bootstrap CIs,
intensity and mask-area KL against a real-vs-real baseline, and the report's triplet grid and section."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from medsyn.errors import DataError
from medsyn.evaluate.mask_divergence import mask_distribution_divergence
from medsyn.evaluate.segmentation import (
    SegmentationConfig,
    SegmentationSet,
    predict_masks,
    segmentation_utility,
    train_segmenter,
)
from medsyn.evaluate.stats import bootstrap_counts, cluster_codes, percentile_ci
from medsyn.report.segmentation import nearest_real, segmentation_section, triplet_grid

CFG = SegmentationConfig(channels=[8, 16], strides=[2], num_res_units=0, epochs=15, batch_size=16, lr=1e-2, patience=4)
N_BOOT = 200


pytestmark = pytest.mark.usefixtures("one_thread")


def shapes(n: int, seed: int, prefix: str | None, labels: int = 1, shift: int = 0) -> SegmentationSet:
    """16-px noisy images with a bright disc (label 1) and, for labels=2, a dimmer 4x4 square (label 2); the
    masks are the shapes. Three images per patient `prefix`N (no ids when prefix is None); `shift` brightens."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    masks = np.zeros((n, 1, 16, 16), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(4, 12, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2, 4) ** 2
        masks[i, 0][disc] = 1
        if labels == 2:
            y0, x0 = rng.integers(0, 12, 2)
            square = (yy >= y0) & (yy < y0 + 4) & (xx >= x0) & (xx < x0 + 4)
            masks[i, 0][square & ~disc] = 2
    images = rng.normal(50, 12, masks.shape) + 140 * (masks == 1) + 80 * (masks == 2) + shift
    ids = None if prefix is None else [f"{prefix}{i // 3}" for i in range(n)]
    return SegmentationSet(np.clip(images, 0, 255).astype(np.uint8), masks, ids)


def real_splits(labels: int = 1) -> tuple[SegmentationSet, SegmentationSet, SegmentationSet]:
    return shapes(60, 1, "a", labels), shapes(30, 2, "b", labels), shapes(60, 3, "c", labels)


@pytest.fixture(scope="module")
def good():
    """Synthetic pairs that are fresh draws of the real generator: as useful as real pairs."""
    return segmentation_utility(*real_splits(), shapes(60, 4, None), CFG, N_BOOT)


@pytest.fixture(scope="module")
def shuffled():
    """The same synthetic images with each other's masks: pairs that teach nothing."""
    syn = shapes(60, 4, None)
    wrong = SegmentationSet(syn.images, syn.masks[np.random.default_rng(0).permutation(60)])
    return segmentation_utility(*real_splits(), wrong, CFG, N_BOOT)


def test_real_pairs_segment_real_test_patients(good):
    trtr = good.trtr
    assert trtr["mean_dice"]["value"] > 0.9 and trtr["mean_f1"]["value"] > 0.9
    assert trtr["mean_dice"]["ci_low"] <= trtr["mean_dice"]["value"] <= trtr["mean_dice"]["ci_high"]
    assert trtr["labels"]["label_1"]["n_images_with_label"] == 60
    assert trtr["training"]["best_val_mean_dice"] > 0.9
    assert good.resampling["resample_unit"] == "patient" and good.resampling["n_patients"] == 20


def test_good_synthetic_pairs_keep_the_real_dice(good):
    ratio = good.ratio["dice"]
    assert 0.95 < ratio["value"] < 1.05
    assert ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"] and ratio["ci_high"] - ratio["ci_low"] < 0.1
    assert abs(good.augmentation_gain["dice"]["value"]) < 0.05
    d = json.loads(json.dumps(good.to_dict()))  # strict JSON, per-image arrays left out
    assert "dice_per_image" not in d and set(d["ratio"]) == {"dice", "f1"}


def test_shuffled_masks_give_a_ratio_clearly_below_one(shuffled):
    assert shuffled.trtr["mean_dice"]["value"] > 0.9
    assert shuffled.ratio["dice"]["ci_high"] < 0.8 and shuffled.ratio["f1"]["ci_high"] < 0.8


def test_ratio_ci_resamples_test_patients_paired(shuffled):
    """Recompute the ratio's CI from the per-image Dice with whole test patients resampled, the same
    patients for both settings: it must be the reported one."""
    dice = shuffled.dice_per_image[:2, :, 0]  # trtr, tstr; one label
    codes, n_units = cluster_codes(np.array([f"c{i // 3}" for i in range(60)]), 60)
    w = np.stack(list(bootstrap_counts(n_units, N_BOOT, 0)))[:, codes]  # (B, images)
    means = (w @ np.nan_to_num(dice).T) / (w @ np.isfinite(dice).T)  # (B, 2)
    lo, hi = percentile_ci(means[:, 1] / means[:, 0], 0.95)
    assert lo == pytest.approx(shuffled.ratio["dice"]["ci_low"]) and hi == pytest.approx(
        shuffled.ratio["dice"]["ci_high"]
    )


def test_multi_label_masks_get_per_label_dice():
    real_train, real_val, real_test = real_splits(labels=2)
    out = segmentation_utility(real_train, real_val, real_test, shapes(60, 4, None, 2), CFG, 50,
                               label_names=["disc", "square"]).to_dict()  # fmt: skip
    disc, square = (out["trtr"]["labels"][k]["dice"]["value"] for k in ("disc", "square"))
    assert disc > 0.8 and square > 0.3
    assert out["trtr"]["mean_dice"]["value"] == pytest.approx((disc + square) / 2)


def test_segmenter_is_deterministic_and_trains_without_validation():
    data = shapes(30, 5, "p")
    cfg = SegmentationConfig(channels=[8, 16], strides=[2], num_res_units=0, epochs=3, batch_size=16)
    (m1, info), (m2, _) = (train_segmenter(data.images, data.masks, cfg) for _ in range(2))
    assert info["best_val_mean_dice"] is None and info["best_epoch"] == 3 and len(info["epochs"]) == 3
    assert np.array_equal(predict_masks(m1, data.images), predict_masks(m2, data.images))


def test_divergence_same_distribution_near_baseline_shifted_far_above():
    real = shapes(90, 1, "a", labels=2)
    same = mask_distribution_divergence(real, shapes(90, 4, None, 2)).to_dict()
    shifted = mask_distribution_divergence(real, shapes(90, 4, None, 2, shift=60)).to_dict()
    assert same["n_real_a"] + same["n_real_b"] == 90 and same["n_synthetic"] == same["n_real_b"]
    assert same["intensity"]["over_baseline"] < 2
    assert shifted["intensity"]["over_baseline"] > 20
    assert [p["what"] for p in same["area"]] == ["mask area: label_1", "mask area: label_2"]
    assert same["area"][0]["over_baseline"] < 3
    assert shifted["area"][0]["synthetic"] == same["area"][0]["synthetic"]  # same masks, same areas


def test_bad_inputs_are_data_errors():
    real_train, real_val, real_test = real_splits()
    syn = shapes(30, 4, None)
    with pytest.raises(DataError, match="30 images but 29 masks"):
        SegmentationSet(syn.images, syn.masks[:29])
    with pytest.raises(DataError, match="no mask has any foreground"):
        SegmentationSet(syn.images, np.zeros_like(syn.masks))
    with pytest.raises(DataError, match="beyond the 1 label"):
        segmentation_utility(real_train, real_val, real_test, SegmentationSet(syn.images, syn.masks * 2), CFG)
    few = SegmentationSet(real_test.images[:9], real_test.masks[:9], real_test.patient_ids[:9])
    with pytest.raises(DataError, match="3 patients, fewer than the 5"):
        segmentation_utility(real_train, real_val, few, syn, CFG)
    with pytest.raises(DataError, match="in both real_train and real_test"):
        segmentation_utility(real_train, real_val, real_train, syn, CFG)


def test_triplet_grid_finds_the_source_of_an_exact_copy():
    real = shapes(30, 1, "a")
    picks = np.array([7, 3, 21])
    nearest = nearest_real(real.images[picks], real.images, size=8)
    assert nearest.indices[:, 0].tolist() == picks.tolist() and np.all(nearest.distances == 0)
    png = triplet_grid(real.masks[picks], real.images[picks], real.images, nearest)
    with Image.open(io.BytesIO(base64.b64decode(png))) as img:
        assert img.format == "PNG" and img.size[0] > 50


def test_html_section_says_silver_standard_only_when_flagged(good):
    real = shapes(90, 1, "a")
    div = mask_distribution_divergence(real, shapes(30, 4, None)).to_dict()
    plain = segmentation_section(good.to_dict(), div, None, silver_standard=False)
    silver = segmentation_section(good.to_dict(), div, None, silver_standard=True)
    assert "silver-standard" not in plain.lower() and "silver-standard" in silver
    for text in ("train synthetic (TSTR)", "synthetic / real (ratio, paired)", "mask area: label_1", "pixel intensity"):
        assert text in plain
    assert segmentation_section(None, div, None, silver_standard=True) == ""
