"""`medsyn evaluate` on image + mask sets: the segmentation stage runs when the synthetic set carries masks
(labels.csv with a `mask` column, as twostage generation writes), judges Useful?, fills the report; a set
without labels is judged by segmentation alone; a synthetic set without masks adds nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsyn.data.cache import PreparedDataset, prepare
from medsyn.data.phantom import PHANTOM_CLASSES, render_phantom
from medsyn.evaluate import evaluate

SIZE = 32
TINY = {"classifier": {"epochs": 1}, "reid": {"epochs": 1, "steps_per_epoch": 2}, "utility": {"n_bootstrap": 50},
        "saliency": {"images": 0}, "kid_subsets": 5, "segmentation": {"epochs": 12, "lr": 0.003, "channels": [8, 16], "strides": [2]}}  # fmt: skip


def write_pairs(folder: Path, images: np.ndarray, masks: np.ndarray, labels: np.ndarray | None) -> Path:
    """A labels.csv set (path, patient_id, mask, one column per class unless `labels` is None)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(img[0]).save(folder / "images" / f"{i:04d}.png")
        Image.fromarray(mask[0]).save(folder / "masks" / f"{i:04d}.png")
        row = {"path": f"images/{i:04d}.png", "patient_id": 9_000_001 + i, "mask": f"masks/{i:04d}.png"}
        if labels is not None:
            row |= {c: int(v) for c, v in zip(PHANTOM_CLASSES, labels[i], strict=True)}
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare("phantom?n=240&seed=0", SIZE, tmp_path_factory.mktemp("real") / "cache", quiet=True)


def unseen(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = render_phantom(n, SIZE, seed=0, start=500_000)  # patients the real cache does not have
    return np.round(batch.images * 255).astype(np.uint8), batch.masks, batch.labels


def test_pairs_with_masks_get_the_segmentation_utility(real: PreparedDataset, tmp_path: Path) -> None:
    images, masks, labels = unseen(120)
    folder = write_pairs(tmp_path / "syn", images, masks, labels)
    m = evaluate(real.path, folder, tmp_path / "eval", quick=True, device="cpu", settings=TINY, quiet=True)
    seg = m["segmentation"]
    assert seg["counts"]["n_synthetic_images"] == 120 and seg["silver_standard"] is False
    assert seg["trtr"]["mean_dice"]["value"] > 0.8, seg["trtr"]  # the phantom's lungs are easy to segment
    assert 0.85 < seg["ratio"]["dice"]["value"] < 1.15  # unseen phantom pairs are as good as real ones
    assert seg["divergence"]["intensity"]["over_baseline"] is not None
    assert seg["verdict"]["check"] == "segmentation utility (Dice, synthetic vs real pairs)"
    assert seg["verdict"]["level"] in ("pass", "warn")
    assert re.search(r"ratio \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}\)", seg["verdict"]["reason"]), seg["verdict"]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "do synthetic image–mask pairs train a segmenter" in html and "Segmentation utility" in html
    assert "mask, synthetic and nearest real images" in html and "silver-standard" not in html.lower()


def test_wrong_masks_fail_useful(real: PreparedDataset, tmp_path: Path) -> None:
    images, masks, labels = unseen(120)
    folder = write_pairs(tmp_path / "shifted", images, np.rot90(masks, axes=(2, 3)).copy(), labels)  # lungs lying down
    m = evaluate(real.path, folder, tmp_path / "eval", quick=True, device="cpu", settings=TINY, quiet=True)
    assert m["segmentation"]["ratio"]["dice"]["value"] < 0.7 and m["segmentation"]["verdict"]["level"] == "fail"
    assert m["verdicts"]["useful"]["level"] == "fail"  # the worse of classification and segmentation decides


def test_a_set_without_labels_is_judged_by_segmentation_alone(tmp_path: Path) -> None:
    """Normal radiographs with lung masks: a csv of image and mask columns only, prepared with ?masks=only."""
    batch = render_phantom(160, SIZE, seed=3, per_patient=2)
    reals = write_pairs(tmp_path / "real", np.round(batch.images * 255).astype(np.uint8), batch.masks, None)
    cache = prepare(f"csv:{reals / 'labels.csv'}?masks=only", SIZE, tmp_path / "cache", quiet=True)
    assert cache.classes == []
    images, masks, _ = unseen(80)
    folder = write_pairs(tmp_path / "syn", images, masks, None)
    m = evaluate(cache.path, folder, tmp_path / "eval", quick=True, device="cpu", settings=TINY, quiet=True)
    assert m["utility"]["not_applicable"] and "verdict" not in m["utility"]
    useful = m["verdicts"]["useful"]
    assert useful["level"] == m["segmentation"]["verdict"]["level"] != "n/a", useful
    assert "U-Net" in useful["reason"]


def test_a_synthetic_set_without_masks_adds_no_segmentation(real: PreparedDataset, tmp_path: Path) -> None:
    images, _, labels = unseen(40)
    m = evaluate(real.path, (images, labels, PHANTOM_CLASSES), tmp_path / "eval", quick=True, device="cpu",
                 settings=TINY, quiet=True)  # fmt: skip
    assert "segmentation" not in m  # the phantom's real masks alone ask for nothing
