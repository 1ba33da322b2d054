"""Re-identification attack: verification on held-out patients, linkage of synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsyn.errors import CheckpointError, ConfigError, DataError
from medsyn.evaluate.privacy.linkage import match_synthetic
from medsyn.evaluate.privacy.reid import ReidConfig, load_reid, save_reid, train_reid
from medsyn.evaluate.privacy.verification import PairSampler, verification_auroc
from medsyn.evaluate.stats import wilson_ci


def patients(n_patients: int, per_patient: int, seed: int, size: int = 16):
    """Each patient: a fixed random 4x4 block pattern; each image: that pattern plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.uniform(0.2, 0.8, (n_patients, 1, 4, 4)), np.ones((1, 1, size // 4, size // 4)))
    x = np.repeat(base, per_patient, 0) + rng.normal(0, 0.1, (n_patients * per_patient, 1, size, size))
    ids = np.repeat([f"s{seed}-{p}" for p in range(n_patients)], per_patient)
    return np.clip(x, 0, 1).astype(np.float32), ids


@pytest.fixture(scope="module")
def trained():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is faster for a tiny model
    train_x, train_ids = patients(24, 4, seed=1)
    model = train_reid(train_x, train_ids, ReidConfig(epochs=6, steps_per_epoch=25, seed=0))
    yield model, train_x, train_ids
    torch.set_num_threads(old)


def test_verification_auroc_on_heldout_patients_is_high(trained):
    model, _, _ = trained
    x, ids = patients(16, 4, seed=2)
    res = verification_auroc(model, x, ids, n_bootstrap=200, n_negative_pairs=4000)
    assert res["auroc"] > 0.8 and res["ci_low"] <= res["auroc"] <= res["ci_high"]
    assert res["n_patients"] == 16 and res["n_positive_pairs"] == 16 * 6
    for fpr, entry in res["thresholds"].items():
        assert entry["fpr"] <= float(fpr)
    assert model.history["n_patients"] == 24 and len(model.history["epochs"]) == 6


def test_reid_early_stopping_keeps_best_validation_epoch():
    x, ids = patients(12, 3, seed=5)
    val_x, val_ids = patients(6, 3, seed=6)
    model = train_reid(x, ids, ReidConfig(epochs=3, steps_per_epoch=4, batch_pairs=8, patience=3),
                       val_images=val_x, val_patient_ids=val_ids)
    hist = model.history
    aucs = [e["val_auroc"] for e in hist["epochs"]]
    assert hist["best_val_auroc"] == max(aucs) and hist["best_epoch"] == int(np.argmax(aucs)) + 1
    assert verification_auroc(model, val_x, val_ids, n_bootstrap=0)["auroc"] == pytest.approx(max(aucs))
    with pytest.raises(DataError, match="seen in re-id training"):
        train_reid(x, ids, {"epochs": 1}, val_images=x, val_patient_ids=ids)


def test_verification_refuses_training_patients(trained):
    model, train_x, train_ids = trained
    with pytest.raises(DataError, match="seen in re-id training"):
        verification_auroc(model, train_x, train_ids, n_bootstrap=0)


def test_match_synthetic_flags_near_copies_not_independent_images(trained):
    model, train_x, train_ids = trained
    heldout, heldout_ids = patients(16, 4, seed=2)
    ver = verification_auroc(model, heldout, heldout_ids, n_bootstrap=0)
    noise = np.random.default_rng(5).normal(0, 0.03, train_x.shape)
    copies = np.clip(train_x + noise, 0, 1).astype(np.float32)
    independent, _ = patients(20, 2, seed=3)
    got = {name: match_synthetic(model, imgs, train_x, train_ids, ver, at_fpr=0.05, heldout_images=heldout)
           for name, imgs in (("copies", copies), ("independent", independent))}
    cal_copies = got["copies"]["gallery_calibrated"]["0.05"]["synthetic"]["fraction"]
    cal_indep = got["independent"]["gallery_calibrated"]["0.05"]["synthetic"]["fraction"]
    assert cal_copies > 0.8 and cal_indep < 0.2
    # Near-copies are linked to the very patient they were copied from.
    assert np.mean(got["copies"]["best_patient"] == train_ids) > 0.8
    assert got["copies"]["threshold"] == ver["thresholds"]["0.05"]["threshold"]
    assert "heldout_baseline" in got["copies"] and got["copies"]["best_score"].shape == (len(copies),)


def test_pair_sampler_is_balanced_and_deterministic():
    ids = np.array(["a", "a", "a", "b", "c", "c"])
    s1, s2 = PairSampler(ids, 7), PairSampler(ids, 7)
    pa, pb = s1.positives(50)
    assert np.all(ids[pa] == ids[pb]) and np.all(pa != pb)
    na, nb = s1.negatives(50)
    assert np.all(ids[na] != ids[nb])
    assert np.array_equal(pa, s2.positives(50)[0])
    a, b = PairSampler(ids, 0).all_positives(max_per_patient=2)
    assert len(a) == 2 + 1 and np.all(ids[a] == ids[b])


def test_reid_input_errors_and_wilson():
    x = np.zeros((3, 1, 16, 16), np.float32)
    with pytest.raises(DataError, match="one patient with >= 2 images"):
        train_reid(x, ["a", "b", "c"], {"epochs": 1})
    with pytest.raises(ConfigError, match="reid.head"):
        ReidConfig(head="concat")
    lo, hi = wilson_ci(0, 50, 0.95)
    assert lo == 0 and 0 < hi < 0.1


def test_save_load_round_trip_keeps_outputs_not_patient_ids(trained, tmp_path):
    model, train_x, train_ids = trained
    folder = save_reid(model, tmp_path / "reid", extra={"what": "test"})
    loaded = load_reid(folder, device="cpu")
    query, _ = patients(5, 2, seed=7)
    q, g = model.embed(query), model.embed(train_x)
    assert torch.equal(loaded.embed(query), q) and torch.equal(loaded.embed(train_x), g)
    for a, b in zip(loaded.best_match(q, g), model.best_match(q, g), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.cfg == model.cfg and loaded.history == model.history and loaded.meta["what"] == "test"
    assert loaded.meta["n_train_patients"] == 24 and loaded.meta["encoder"]["name"] == "smallcnn"
    # Patient ids never reach the folder; a loaded model says it cannot check them.
    stored = b"".join(f.read_bytes() for f in folder.iterdir())
    assert not any(pid.encode() in stored for pid in set(train_ids)) and b"s1-" not in stored
    assert loaded.train_patients == frozenset() and not loaded.train_patients_known
    heldout, heldout_ids = patients(6, 3, seed=2)
    note = verification_auroc(loaded, heldout, heldout_ids, n_bootstrap=0)["notes"][0]
    assert "could not be checked" in note and "24 training patient" in note
    assert "notes" not in verification_auroc(model, heldout, heldout_ids, n_bootstrap=0)
    assert save_reid(loaded, tmp_path / "again") and load_reid(tmp_path / "again").meta["n_train_patients"] == 24


def test_load_reid_bad_files_are_one_line_checkpoint_errors(trained, tmp_path):
    model, _, _ = trained
    save_reid(model, tmp_path / "bad")
    (tmp_path / "bad" / "reid.safetensors").write_bytes(b"{not safetensors")
    for folder, match in ((tmp_path / "none", "not found"), (tmp_path / "bad", "not a readable safetensors")):
        with pytest.raises(CheckpointError, match=match) as info:
            load_reid(folder)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="ReidModel"):
        save_reid(model.encoder, tmp_path / "x")


def test_cosine_gallery_scored_as_one_matrix_product_equals_pairwise_scoring(trained):
    model, train_x, _ = trained
    query, gallery = model.embed(patients(5, 3, seed=4)[0]), model.embed(train_x)
    best, arg = model.best_match(query, gallery)
    with torch.no_grad():
        pairwise = model.head(query[:, None, :].expand(-1, len(gallery), -1),
                              gallery[None, :, :].expand(len(query), -1, -1)).double()  # fmt: skip
    np.testing.assert_allclose(best, pairwise.max(dim=1).values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(arg, pairwise.argmax(dim=1).numpy())
