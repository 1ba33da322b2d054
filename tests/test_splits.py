"""Splits are by patient (never a patient in two splits), stratified, deterministic, honour official splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, needs_data
from medsyn.data import open_dataset
from medsyn.data.splits import assign_splits, cap_per_class, check_no_leak, select_classes
from medsyn.errors import ConfigError, DataError


def fake_table(n_patients=60, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            rows.append(
                {"source": f"p{p}_{k}.png", "patient_id": f"p{p}", "split": "", "mask": "",
                 "A": float(rng.random() < 0.3), "B": float(p % 10 == 0)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_deterministic():
    t = fake_table()
    s1 = assign_splits(t, ["A", "B"], val=0.1, test=0.2, seed=3)
    s2 = assign_splits(t, ["A", "B"], val=0.1, test=0.2, seed=3)
    s3 = assign_splits(t, ["A", "B"], val=0.1, test=0.2, seed=4)
    assert (s1 == s2).all() and not (s1 == s3).all()
    assert (t.assign(split=s1).groupby("patient_id")["split"].nunique() == 1).all()
    frac = s1.value_counts(normalize=True)
    assert 0.1 < frac["test"] < 0.3 and 0.04 < frac["val"] < 0.2
    # the rare class B (every 10th patient) reaches the test split too: stratified
    assert (t.loc[s1 == "test", "B"] == 1).any()


def test_shared_files_link_patients():
    t = fake_table(20, 1)
    t.loc[5, "source"] = t.loc[6, "source"]  # the same image listed under two patient ids
    for seed in range(10):
        s = assign_splits(t, ["A", "B"], seed=seed)
        assert s[5] == s[6]


def test_official_splits_are_honoured():
    t = fake_table(40, 2)
    t["split"] = ["test" if i < 20 else "trainval" for i in range(len(t))]
    s = assign_splits(t, ["A", "B"], val=0.2, seed=0)
    assert (s[:20] == "test").all()
    assert set(s[20:]) == {"train", "val"}
    t.loc[20, "patient_id"] = t.loc[0, "patient_id"]  # an official list that leaks a patient
    s = assign_splits(t, ["A", "B"], val=0.2, seed=0)
    assert s[20] == "test"


def test_check_no_leak_detects_leak():
    t = fake_table(4, 2)
    t["split"] = ["train", "test"] * 4
    with pytest.raises(DataError, match="more than one split"):
        check_no_leak(t)


def test_select_classes_and_normal_class():
    t = pd.DataFrame(
        {"source": list("abcd"), "patient_id": list("abcd"), "split": "", "mask": "",
         "A": [1.0, 0, 0, 1], "B": [0.0, 1, 0, 1]}
    )  # fmt: skip
    out, classes = select_classes(t, ["A", "B"], ["A"], normal="No Finding")
    assert classes == ["A", "No Finding"]
    assert list(out["source"]) == ["a", "c", "d"]  # 'b' had only B: dropped, not called normal
    assert list(out["No Finding"]) == [0.0, 1.0, 0.0]
    with pytest.raises(ConfigError):
        select_classes(t, ["A", "B"], ["C"])


def test_cap_per_class_limits_train_only():
    t = fake_table(100, 2)
    t["split"] = assign_splits(t, ["A", "B"], seed=0)
    capped = cap_per_class(t, ["A", "B"], cap=10, seed=0)
    train = capped[capped["split"] == "train"]
    assert (train["B"] == 1).sum() <= 10 + (train["A"] == 1).sum()
    # the rarer class B is filled first, up to the cap (or all it has in train)
    assert (train["B"] == 1).sum() >= min(10, ((t["split"] == "train") & (t["B"] == 1)).sum())
    assert 10 <= (train["A"] == 1).sum() <= 20
    assert ((train[["A", "B"]] == 0).all(axis=1)).sum() <= 10
    assert (capped["split"] == "test").sum() == (t["split"] == "test").sum()


@needs_data("nih-cxr14-sample")
def test_nih_sample_split_by_patient():
    src = open_dataset(f"nih:{SHARED_DATA / 'nih-cxr14-sample'}")
    t = src.table.assign(split=assign_splits(src.table, src.classes, seed=0))
    check_no_leak(t)
    assert (t.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(t["split"]) == {"train", "val", "test"}


@needs_data("covid-chestxray")
def test_covid_duplicate_patients_stay_together():
    src = open_dataset(f"ieee8023:{SHARED_DATA / 'covid-chestxray'}")
    for seed in range(5):
        t = src.table.assign(split=assign_splits(src.table, src.classes, seed=seed))
        check_no_leak(t)
        for a, b in (("285", "339"), ("287", "340")):
            assert set(t.loc[t["patient_id"].isin([a, b]), "split"]).__len__() == 1
