"""The procedural chest phantom: determinism, lazy chunks, labels, masks, patients, and the Source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsyn.data import open_dataset
from medsyn.data import phantom as ph
from medsyn.data.base import Record
from medsyn.data.phantom import PHANTOM_CLASSES, PhantomSource, open_phantom, render_phantom
from medsyn.data.spec import parse_spec
from medsyn.errors import SpecError


def test_class_list() -> None:
    assert PHANTOM_CLASSES == ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation"]


def test_same_seed_same_arrays_other_seed_differs() -> None:
    a, b = render_phantom(12, 32, seed=5), render_phantom(12, 32, seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels) and a.patient_ids == b.patient_ids
    assert not np.array_equal(a.images, render_phantom(12, 32, seed=6).images)


@pytest.mark.parametrize("size", [16, 33, 64])
def test_shapes_dtypes_ranges(size: int) -> None:
    b = render_phantom(9, size, seed=1, per_patient=3)
    assert b.images.shape == (9, 1, size, size) and b.images.dtype == np.float32
    assert b.masks.shape == (9, 1, size, size) and b.masks.dtype == np.uint8
    assert b.labels.shape == (9, len(PHANTOM_CLASSES)) and b.labels.dtype == np.float32
    assert np.isfinite(b.images).all() and b.images.min() >= 0 and b.images.max() <= 1
    assert set(np.unique(b.masks)) <= {0, 1} and set(np.unique(b.labels)) <= {0.0, 1.0}
    assert b.patient_ids == ["P00000"] * 3 + ["P00001"] * 3 + ["P00002"] * 3
    assert b.images.std() > 0.1  # a chest, not a flat field


def test_chunks_equal_one_shot() -> None:
    whole = render_phantom(23, 24, seed=3, per_patient=4)
    parts = [render_phantom(min(5, 23 - s), 24, seed=3, per_patient=4, start=s) for s in range(0, 23, 5)]
    assert np.array_equal(whole.images, np.concatenate([p.images for p in parts]))
    assert np.array_equal(whole.masks, np.concatenate([p.masks for p in parts]))
    assert np.array_equal(whole.labels, np.concatenate([p.labels for p in parts]))
    assert whole.patient_ids == sum((p.patient_ids for p in parts), [])
    assert render_phantom(1, 24, seed=3, start=1000).patient_ids == ["P00250"]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="size"):
        render_phantom(1, 8)
    with pytest.raises(ValueError, match="per_patient"):
        render_phantom(1, 16, per_patient=0)


def test_labels_are_multilabel_with_every_class() -> None:
    labels = ph._plan(2000, 0, 4, 0).labels
    prevalence = labels.mean(0)
    assert ((prevalence > 0.08) & (prevalence < 0.35)).all(), prevalence
    per_image = labels.sum(1)
    assert 0.25 < (per_image == 0).mean() < 0.6  # many images with no finding
    assert (per_image >= 2).mean() > 0.05  # co-occurrence happens
    assert np.array_equal(render_phantom(40, 16).labels, labels[:40])  # the table agrees with the pixels


def test_chronic_findings_stay_with_the_patient_acute_ones_vary() -> None:
    labels = ph._plan(2000, 0, 4, 0).labels.reshape(500, 4, -1)
    for k, c in enumerate(PHANTOM_CLASSES):
        constant = (labels[:, :, k] == labels[:, :1, k]).all()
        assert constant == (c in ("Cardiomegaly", "Nodule")), c


def test_masks_cover_both_lungs_inside_the_body() -> None:
    b = render_phantom(24, 48, seed=0)
    mask, img = b.masks[:, 0].astype(bool), b.images[:, 0]
    half = mask.shape[-1] // 2
    assert (mask[:, :, :half].sum((1, 2)) > 40).all() and (mask[:, :, half:].sum((1, 2)) > 40).all()
    assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()
    # In patient coordinates (before positioning), every lung pixel lies inside the body outline.
    plan = ph._plan(24, 0, 4, 0)
    canvas = ph._patient_canvas(ph._Anatomy(plan.patients), 60, torch.zeros(6, 60, 60))
    assert not ((canvas["dist"] > 0) & (canvas["body"] == 0)).any()
    # Aerated lungs are darker than the mediastinum between them (spine, heart, great vessels).
    middle = img[:, 12:36, half - 2 : half + 2].mean((1, 2))
    lungs = (img * mask).sum((1, 2)) / mask.sum((1, 2))
    assert (lungs < middle - 0.15).all()


def test_cardiomegaly_widens_the_heart() -> None:
    """The same patient with a larger cardiothoracic ratio: the heart gap between the lungs widens."""
    plan = ph._plan(1, 0, 1, 0)

    def heart_gap(ctr: float) -> int:
        plan.patients["ctr"] = np.array([ctr])
        plan.rngs = ph._plan(1, 0, 1, 0).rngs
        mask = ph._render(plan, slice(0, 1), 64)[1].numpy()[0]
        gaps = [np.diff(np.flatnonzero(row)).max() for row in mask if row.sum() > 1]
        return max(gaps)

    assert heart_gap(0.6) > heart_gap(0.42) + 5
    p = ph._plan(3000, 0, 1, 0).patients
    assert np.array_equal(p["cardio"] > 0, p["ctr"] > 0.5)
    assert 0.12 < p["cardio"].mean() < 0.3


def _aligned(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Each image cropped to its lung-mask box and resized: undoes shift and scale, keeps the anatomy."""
    out = []
    for img, m in zip(images[:, 0], masks[:, 0], strict=True):
        ys, xs = np.nonzero(m)
        crop = torch.from_numpy(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy())
        out.append(F.interpolate(crop[None, None], size=(24, 24), mode="bilinear").ravel().numpy())
    x = np.stack(out)
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


def test_same_patient_images_are_alike() -> None:
    b = render_phantom(120, 48, seed=2, per_patient=4)
    assert len(set(b.patient_ids)) == 30
    x = _aligned(b.images, b.masks)
    corr = x @ x.T / x.shape[1]
    np.fill_diagonal(corr, -np.inf)
    pid = np.array(b.patient_ids)
    same_patient_nn = (pid[corr.argmax(1)] == pid).mean()
    assert same_patient_nn > 0.3  # chance is 3/119
    # ...and not because images repeat: positioning and exposure differ within a patient.
    assert not np.array_equal(b.images[0], b.images[1])
    plan = ph._plan(8, 2, 4, 0)
    assert np.ptp(plan.images["dx"][:4]) > 0 and len(plan.patients["tw"]) == 2


def test_source_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    src = open_phantom(parse_spec("phantom?n=70&size=16&seed=2&per_patient=5"))
    assert isinstance(src, PhantomSource) and src.name == "phantom" and src.classes == PHANTOM_CLASSES
    assert len(src) == 70 and list(src.table.columns[:4]) == ["source", "patient_id", "split", "mask"]
    assert src.table["source"].iat[3] == "phantom/000003" and src.table["patient_id"].iat[12] == "P00002"
    assert (src.table["split"] == "").all() and src.table["patient_id"].nunique() == 14
    assert src.info["seed"] == 2 and src.info["size"] == 16 and src.info["patients"] == 14
    ref = render_phantom(70, 16, seed=2, per_patient=5)
    assert np.array_equal(src.labels(), ref.labels)

    calls = []
    real = ph.render_phantom
    monkeypatch.setattr(ph, "render_phantom", lambda *a, **k: calls.append(k["start"]) or real(*a, **k))
    records = [src[i] for i in range(len(src))]
    assert calls == [0, 64]  # one batched render per chunk when read in order
    rec = records[66]
    assert isinstance(rec, Record) and rec.patient_id == "P00013" and rec.source == "phantom/000066"
    assert rec.image.shape == (1, 16, 16) and rec.image.dtype == np.float32
    assert rec.mask is not None and rec.mask.shape == (16, 16) and rec.mask.dtype == np.uint8
    assert np.array_equal(rec.image, ref.images[66]) and np.array_equal(rec.labels, ref.labels[66])
    with pytest.raises(IndexError):
        src.read_image(70)


def test_open_dataset_defaults() -> None:
    src = open_dataset("phantom?n=5")
    assert len(src) == 5 and src.read_image(4).shape == (1, 64, 64)
    assert src.info["per_patient"] == 4


@pytest.mark.parametrize(
    "spec", ["phantom?n=0", "phantom?size=8", "phantom?size=abc", "phantom?seed=-1", "phantom?per_patient=0",
             "phantom?colour=red", "phantom:/data?n=5"],
)  # fmt: skip
def test_bad_spec_options(spec: str) -> None:
    with pytest.raises(SpecError) as exc:
        open_phantom(parse_spec(spec))
    assert "\n" not in str(exc.value)
