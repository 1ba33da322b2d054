"""Every adapter reads its format exactly: counts per class and per patient, on real samples and on files
the tests write."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA, needs_data, write_png
from medsyn.data import open_dataset
from medsyn.data.adapters.chexpert import CHEXPERT_CLASSES
from medsyn.errors import DataError, SpecError

NIH = SHARED_DATA / "nih-cxr14-sample"
COVID = SHARED_DATA / "covid-chestxray"
PNEUMONIA = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz"


@needs_data("nih-cxr14-sample")
def test_nih_sample_counts():
    src = open_dataset(f"nih:{NIH}")
    assert len(src) == 703
    assert src.table["patient_id"].nunique() == 192
    csv = pd.read_csv(NIH / "Data_Entry_2017.csv")
    for c in src.classes:
        expected = csv["Finding Labels"].str.split("|").apply(lambda fs, c=c: c in fs).sum()
        assert (src.table[c] == 1).sum() == expected, c
    no_finding = (csv["Finding Labels"] == "No Finding").sum()
    assert (src.labels().sum(axis=1) == 0).sum() == no_finding
    rec = src[0]
    assert rec.image.shape == (1, 64, 64) and rec.image.dtype == np.float32
    assert rec.image.min() >= 0 and rec.image.max() <= 1 and rec.image.max() > 0.2


@needs_data("covid-chestxray")
def test_ieee8023_reads_xray_rows_without_todo():
    meta = pd.read_csv(COVID / "metadata.csv", dtype=str, keep_default_na=False)
    xray = meta[meta["modality"] == "X-ray"]
    expected = int((xray["finding"] != "todo").sum())
    src = open_dataset(f"ieee8023:{COVID}")
    assert len(src) == expected
    assert src.info["rows_todo_left_out"] == int((xray["finding"] == "todo").sum())
    # combined findings become multi-label
    combined = meta[(meta["finding"] == "COVID-19, ARDS") & (meta["modality"] == "X-ray")]
    both = ((src.table["COVID-19"] == 1) & (src.table["ARDS"] == 1)).sum()
    assert both == len(combined) > 0
    assert "No Finding" not in src.classes and "todo" not in src.classes
    masked_rows = src.table[src.table["mask"] != ""]
    assert len(masked_rows) > 0
    i = int(masked_rows.index[0])
    mask = src.read_mask(i)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.sum() > 0


@needs_data("pneumoniamnist")
def test_pneumoniamnist_counts_and_official_splits():
    src = open_dataset(f"medmnist:{PNEUMONIA}")
    assert len(src) == 5856
    assert src.classes == ["normal", "pneumonia"]
    assert src.table["split"].value_counts().to_dict() == {"train": 4708, "val": 524, "test": 624}
    npz = np.load(PNEUMONIA)
    labels = np.concatenate([npz[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    assert (src.table["pneumonia"] == 1).sum() == (labels == 1).sum()
    assert src.info["patient_id_fallback"] == 5856  # MedMNIST has no patient ids
    assert src[0].image.shape == (1, 28, 28)


def _write_chexpert(root, rows):
    """A miniature CheXpert-v1.0-small with the official column layout."""
    records = []
    for i, (patient, view, values) in enumerate(rows):
        rel = f"CheXpert-v1.0-small/train/patient{patient:05d}/study1/view{i}_{view}.jpg"
        write_png(root.parent / rel, seed=i)
        rec = {"Path": rel, "Sex": "F", "Age": 50, "Frontal/Lateral": view.capitalize(), "AP/PA": "AP"}
        rec.update({c: "" for c in CHEXPERT_CLASSES})
        rec.update(values)
        records.append(rec)
    pd.DataFrame(records).to_csv(root / "train.csv", index=False)


@pytest.mark.parametrize("policy,expected", [("zeros", 0.0), ("ones", 1.0), ("ignore", np.nan)])
def test_chexpert_uncertainty_policies(tmp_path, policy, expected):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    _write_chexpert(
        root,
        [
            (1, "frontal", {"Cardiomegaly": "1.0", "Edema": "-1.0", "No Finding": ""}),
            (1, "lateral", {"Cardiomegaly": "1.0"}),
            (2, "frontal", {"Edema": "0.0", "Pleural Effusion": "-1.0"}),
        ],
    )
    src = open_dataset(f"chexpert:{root}?uncertain={policy}")
    assert len(src) == 2  # frontal only by default
    assert list(src.table["patient_id"]) == ["patient00001", "patient00002"]
    assert src.info["uncertainty_policy"] == policy
    edema = src.table["Edema"].to_numpy()
    np.testing.assert_equal(edema, np.array([expected, 0.0], np.float32))
    assert src.table["Cardiomegaly"].tolist() == [1.0, 0.0]  # blank = not mentioned = 0
    assert len(open_dataset(f"chexpert:{root}?view=all")) == 3


def test_chexpert_bad_policy_and_bad_values(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    _write_chexpert(root, [(1, "frontal", {"Edema": "maybe"})])
    with pytest.raises(SpecError):
        open_dataset(f"chexpert:{root}?uncertain=half")
    with pytest.raises(DataError, match="maybe"):
        open_dataset(f"chexpert:{root}")


def test_folder_adapter_and_empty_class(tmp_path):
    for cls, n in (("normal", 3), ("pneumonia", 2)):
        for i in range(n):
            write_png(tmp_path / cls / f"p{i % 2}_img{i}.png", seed=i)
    src = open_dataset(f"folder:{tmp_path}?patient=^(p\\d+)_")
    assert src.classes == ["normal", "pneumonia"]
    assert (src.table["normal"] == 1).sum() == 3 and (src.table["pneumonia"] == 1).sum() == 2
    assert set(src.table["patient_id"]) == {"p0", "p1"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty class"):
        open_dataset(f"folder:{tmp_path}")


def test_csv_adapter_columns_masks_and_blank_labels(tmp_path):
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
        (tmp_path / "mask").mkdir(exist_ok=True)
        Image.fromarray(np.eye(20, 24, dtype=np.uint8) * 255).save(tmp_path / "mask" / f"{i}.png")
    pd.DataFrame(
        {
            "path": [f"img/{i}.png" for i in range(4)],
            "patient_id": ["a", "a", "b", "c"],
            "mask": [f"mask/{i}.png" for i in range(4)],
            "Effusion": ["1", "0", "", "1"],
            "Nodule": ["0", "1", "0", "0"],
            "age": ["50", "60", "70", "80"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    src = open_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert src.classes == ["Effusion", "Nodule"]  # 'age' is not a 0/1 column
    assert np.isnan(src.table["Effusion"].iloc[2])
    np.testing.assert_array_equal(src.read_mask(0), np.eye(20, 24, dtype=np.uint8))  # 0/255 -> 0/1
    assert open_dataset(f"csv:{tmp_path / 'labels.csv'}?labels=Nodule").classes == ["Nodule"]


def test_csv_wrong_columns_and_missing_files(tmp_path):
    pd.DataFrame({"foo": ["a.png"], "Effusion": ["1"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match="no image path column"):
        open_dataset(f"csv:{tmp_path / 'x.csv'}")
    pd.DataFrame({"path": ["nowhere.png"], "Effusion": ["1"]}).to_csv(tmp_path / "y.csv", index=False)
    with pytest.raises(DataError, match="not found"):
        open_dataset(f"csv:{tmp_path / 'y.csv'}")


def test_nih_csv_without_expected_columns(tmp_path):
    pd.DataFrame({"Image Index": ["a.png"], "Labels": ["No Finding"]}).to_csv(tmp_path / "Data_Entry_2017.csv")
    with pytest.raises(DataError, match="Finding Labels"):
        open_dataset(f"nih:{tmp_path}")


def test_missing_folder_and_unknown_option(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(f"nih:{tmp_path / 'nope'}")
    with pytest.raises(SpecError, match="unknown option"):
        open_dataset(f"nih:{tmp_path}?colour=1")


def _bookkeeping_csv(tmp_path):
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
    pd.DataFrame(
        {
            "image": [f"img/{i}.png" for i in range(4)],
            "labeled": ["1", "1", "1", "0"],  # whether the row has labels at all
            "Effusion": ["1", "0", "0", "0"],
            "Nodule": ["0", "1", "0", "0"],
            "isTrain": ["1", "1", "0", "0"],
            "age": ["50", "60", "70", "80"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_csv_auto_detection_leaves_out_bookkeeping_columns_and_says_why(tmp_path):
    src = open_dataset(f"csv:{_bookkeeping_csv(tmp_path)}")
    assert src.classes == ["Effusion", "Nodule"]
    labels = src.info["labels"]
    assert labels["how"] == "auto-detected" and labels["columns"] == ["Effusion", "Nodule"]
    assert "bookkeeping" in labels["left_out"]["labeled"] and "bookkeeping" in labels["left_out"]["isTrain"]
    assert "not 0/1" in labels["left_out"]["age"]
    assert "rule" in labels and labels["unlabelled_rows"] == 1
    # the row with labeled=0 has unknown labels (masked), not 'no finding'; the row with labeled=1 is negative
    assert np.isnan(src.table.loc[3, ["Effusion", "Nodule"]].to_numpy(float)).all()
    assert (src.table.loc[2, ["Effusion", "Nodule"]] == 0).all()
    named = open_dataset(f"csv:{tmp_path / 'labels.csv'}?labels=Effusion")
    assert named.info["labels"]["how"] == "labels= option" and np.isnan(named.table.loc[3, "Effusion"])
