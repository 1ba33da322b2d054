"""The prepared cache: memory-mapped, atomic, a no-op when repeated, corrupt images fatal or skipped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, needs_data, write_png
from medsyn.data import PreparedDataset, open_dataset, prepare, to_signed, to_unit
from medsyn.data import cache as cache_mod
from medsyn.errors import DataError


def make_csv_dataset(root, n=12, corrupt=(), size=(40, 30)):
    rows = []
    for i in range(n):
        p = write_png(root / "img" / f"{i}.png", size=size, seed=i)
        if i in corrupt:
            p.write_bytes(p.read_bytes()[:60])  # truncated PNG
        rows.append(
            {"path": f"img/{i}.png", "patient_id": f"p{i // 2}", "Effusion": str(i % 2), "Nodule": str(int(i % 3 == 0))}
        )
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return f"csv:{root / 'labels.csv'}"


def test_prepare_writes_memmap_index_and_meta(tmp_path):
    spec = make_csv_dataset(tmp_path)
    ds = prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0)
    assert isinstance(ds.images, np.memmap) and ds.images.shape == (12, 1, 16, 16) and ds.images.dtype == np.uint8
    assert list(ds.index.columns[:5]) == ["row", "source", "patient_id", "split", "has_mask"]
    assert ds.classes == ["Effusion", "Nodule"] and ds.labels.shape == (12, 2)
    assert (ds.index.groupby("patient_id")["split"].nunique() == 1).all()
    assert ds.meta["fit"] == "pad" and "aspect kept" in ds.meta["resize"]
    # 40x30 padded to 16x16: rows 0-1 and 14-15 are black padding (30*16/40 = 12 rows of image)
    assert ds.images[:, :, :2].max() == 0 and ds.images[:, :, 2:14].max() > 0
    x, y = ds.torch_dataset("train")[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 16, 16) and y.shape == (2,)
    assert to_signed(x).min() >= -1 and to_unit(x).max() <= 1


def test_second_prepare_is_noop_and_other_settings_need_force(tmp_path):
    spec = make_csv_dataset(tmp_path)
    prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0)
    stamp = (tmp_path / "cache" / "images.npy").stat().st_mtime_ns
    prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0)
    assert (tmp_path / "cache" / "images.npy").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="--force"):
        prepare(spec, 32, tmp_path / "cache", quiet=True)
    assert prepare(spec, 32, tmp_path / "cache", quiet=True, force=True, workers=0).size == 32


def test_killed_prepare_leaves_no_cache(tmp_path, monkeypatch):
    spec = make_csv_dataset(tmp_path)
    calls = {"n": 0}
    real = cache_mod._decode

    def dying(args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(cache_mod, "_decode", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0)
    assert not (tmp_path / "cache").exists()
    assert not list(tmp_path.glob(".cache*"))  # no partial folder left behind


def test_corrupt_image_fatal_by_default_and_skipped_with_flag(tmp_path):
    spec = make_csv_dataset(tmp_path, corrupt=(3,))
    with pytest.raises(DataError, match=r"3\.png.*--skip-bad"):
        prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0)
    ds = prepare(spec, 16, tmp_path / "cache", quiet=True, workers=0, skip_bad=True)
    assert len(ds) == 11 and ds.meta["skipped"]["count"] == 1
    assert "3.png" in ds.meta["skipped"]["files"][0]["source"]
    assert len(ds.images) == len(ds.index) == 11


def test_parallel_decode_equals_serial(tmp_path):
    spec = make_csv_dataset(tmp_path, n=20)
    a = prepare(spec, 16, tmp_path / "a", quiet=True, workers=0)
    b = prepare(spec, 16, tmp_path / "b", quiet=True, workers=2)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.meta["content_hash"] == b.meta["content_hash"]


def test_class_selection_normal_and_cap_recorded(tmp_path):
    spec = make_csv_dataset(tmp_path, n=24)
    ds = prepare(spec, 16, tmp_path / "c", quiet=True, workers=0, classes=["Effusion"], normal="No Finding", cap=3)
    assert ds.classes == ["Effusion", "No Finding"]
    train = ds.labels[ds.rows("train")]
    assert (train[:, 0] == 1).sum() <= 3 and (train[:, 1] == 1).sum() <= 3
    assert ds.meta["settings"]["cap"] == 3


def test_open_non_cache_is_clear_error(tmp_path):
    with pytest.raises(DataError, match="not a prepared medsyn cache"):
        PreparedDataset(tmp_path)


@needs_data("covid-chestxray")
def test_covid_cache_keeps_masks_and_aspect(tmp_path):
    spec = f"ieee8023:{SHARED_DATA / 'covid-chestxray'}"
    ds = prepare(spec, 32, tmp_path / "c", quiet=True)
    assert ds.masks is not None and ds.masks.shape == (len(ds), 1, 32, 32)
    has = ds.index["has_mask"].to_numpy() == 1
    assert has.sum() == (open_dataset(spec).table["mask"] != "").sum() > 0
    assert ds.masks[has].reshape(has.sum(), -1).max(axis=1).min() == 1
    assert ds.masks[~has].max() == 0
    assert ds.meta["source_info"]["rows_todo_left_out"] == 78


def test_atomic_files_get_normal_permissions(tmp_path):
    import os

    from safetensors.torch import save_file

    from medsyn.io import atomic_dir, atomic_path, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.html", "x")
        with atomic_path(tmp_path / "w.safetensors") as tmp:  # save_file writes a fresh 0600 file
            save_file({"w": torch.zeros(2)}, str(tmp))
        with atomic_dir(tmp_path / "models") as tmp:
            (tmp / "a.txt").write_text("a")
    finally:
        os.umask(old)
    for name, mode in (("report.html", 0o644), ("w.safetensors", 0o644), ("models", 0o755)):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_negative_class_is_named_by_the_dataset_or_the_spec(tmp_path):
    from medsyn.train.data import TrainData

    spec = make_csv_dataset(tmp_path)
    assert prepare(spec, 16, tmp_path / "a", quiet=True, workers=0).meta["negative_class"] == "normal"
    ds = prepare(f"{spec}?negative=no%20hemorrhage", 16, tmp_path / "b", quiet=True, workers=0)
    assert ds.meta["negative_class"] == "no hemorrhage" and ds.classes == ["Effusion", "Nodule"]
    assert open_dataset("phantom?n=4").info["negative_class"] == "No Finding"  # chest X-ray findings
    data = TrainData(ds, ds.classes, ds.rows("train"), ds.labels)
    assert [g.name for g in data.groups(per_class=False)] == ["Effusion", "Nodule", "no hemorrhage"]
    assert data.label_stats()["negative_class"] == "no hemorrhage"


def test_prepare_a_tiny_set_whose_strata_are_all_smaller_than_the_folds(tmp_path):
    """4 single-image patients: stratified 5-fold splitting is impossible (sklearn raises); a seeded
    unstratified pick of patient groups takes over instead of a traceback."""
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
    pd.DataFrame({"path": [f"img/{i}.png" for i in range(4)], "A": ["1", "0", "0", "1"], "B": ["0", "1", "0", "0"]}
                 ).to_csv(tmp_path / "labels.csv", index=False)  # fmt: skip
    ds = prepare(f"csv:{tmp_path / 'labels.csv'}", 16, tmp_path / "c", quiet=True, workers=0)
    counts = {s: len(ds.rows(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 2, "val": 1, "test": 1}  # as k-fold would: test 1 of k=4 folds, val 1 of k=3
