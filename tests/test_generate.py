"""Generation: label recipes, source-format label files read back by medsyn's own adapters, export, reruns."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medsyn.cli.train import register
from medsyn.data import open_dataset
from medsyn.data.adapters.chexpert import CHEXPERT_CLASSES
from medsyn.data.cache import prepare
from medsyn.errors import CheckpointError, ConfigError
from medsyn.generate import export, generate, is_current, make_plan
from medsyn.generate.layout import Layout
from medsyn.models import load_generator
from medsyn.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A conditional (cgan) and a per-class (dcgan) run on a tiny phantom cache."""
    tmp = tmp_path_factory.mktemp("runs")
    cache = prepare("phantom?n=64&seed=0", 16, tmp / "cache", quiet=True).path
    common = dict(data=str(cache), size=16, steps=2, batch=8, width=8, device="cpu", sample_every=100)
    return {
        "cgan": train(TrainConfig(model="cgan", **common), tmp / "cgan", quiet=True),
        "dcgan": train(TrainConfig(model="dcgan", classes=["Effusion"], **common), tmp / "dcgan", quiet=True),
    }


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distribution_set_reads_back_and_reruns_identically(tmp_path: Path, runs: dict[str, Path]) -> None:
    out = generate(runs["cgan"], 40, tmp_path / "syn", seed=3, quiet=True)
    src = open_dataset(f"csv:{out / 'labels.csv'}")  # the csv: adapter reads what generate writes
    assert len(src) == 40 and src.classes == json.loads((runs["cgan"] / "run.json").read_text())["labels"]["classes"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["images"] == 40
        and manifest["mode"] == "distribution"
        and len(manifest["generators"][0]["sha256"]) == 64
    )
    counts = src.table[src.classes].sum().to_dict()
    assert all(manifest["counts"][c] == counts[c] for c in src.classes)
    png = Image.open(out / "images" / "0000000.png")
    assert png.size == (16, 16) and png.mode == "L" and not png.info  # no text chunks, no metadata
    again = generate(runs["cgan"], 40, tmp_path / "again", seed=3, quiet=True)
    assert files(out) == files(again)  # no timestamps anywhere: reruns are byte-identical


def test_per_class_and_balance_counts(tmp_path: Path, runs: dict[str, Path]) -> None:
    groups = json.loads((runs["cgan"] / "run.json").read_text())["groups"]
    per = json.loads(
        (generate(runs["cgan"], None, tmp_path / "per", per_class=3, quiet=True) / "manifest.json").read_text()
    )
    assert set(per["counts"].values()) == {3} and set(per["counts"]) == {g["name"] for g in groups}
    bal = json.loads(
        (generate(runs["cgan"], None, tmp_path / "bal", balance=True, quiet=True) / "manifest.json").read_text()
    )
    largest = max(g["count"] for g in groups)
    assert bal["images"] == sum(largest - g["count"] for g in groups if g["count"])
    with pytest.raises(ConfigError, match="choose one of"):
        generate(runs["cgan"], 5, tmp_path / "x", per_class=2)


def test_per_class_run_and_export_give_the_same_images(tmp_path: Path, runs: dict[str, Path]) -> None:
    direct = generate(runs["dcgan"], None, tmp_path / "direct", per_class=4, quiet=True)
    assert json.loads((direct / "manifest.json").read_text())["counts"] == {"Effusion": 4, "No Finding": 4}
    shared = export(runs["dcgan"], tmp_path / "export")
    assert not list(shared.rglob("*.pt")) and len(list(shared.rglob("generator.safetensors"))) == 2
    via_export = generate(shared, None, tmp_path / "via", per_class=4, quiet=True)
    assert {k: v for k, v in files(direct).items() if k.endswith(".png")} == {
        k: v for k, v in files(via_export).items() if k.endswith(".png")
    }
    with pytest.raises(CheckpointError, match="not a medsyn run"):
        generate(tmp_path, 4, tmp_path / "nothing")


def _write_set(layout: Layout, out: Path, labels: np.ndarray) -> None:
    paths = layout.image_paths(labels)
    for p in paths:
        (out / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16)).save(out / p)
    layout.write_labels(out, out.name, paths, labels)


def test_nih_chexpert_and_folder_layouts_read_back(tmp_path: Path) -> None:
    nih = ["Atelectasis", "Effusion", "Nodule"]
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.uint8)
    _write_set(Layout.for_source("nih", nih, {}), tmp_path / "nih", labels)
    src = open_dataset(f"nih:{tmp_path / 'nih'}")
    assert src.table[nih].to_numpy().tolist() == labels.tolist()
    assert src.table["patient_id"].nunique() == 3  # one synthetic patient per image
    entry = (tmp_path / "nih" / "Data_Entry_2017.csv").read_text()
    assert "Atelectasis|Nodule" in entry and "No Finding" in entry

    chex = ["Cardiomegaly", "Pleural Effusion"]
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    _write_set(Layout.for_source("chexpert", chex, {"view": "frontal"}), tmp_path / "CheXpert-synth", labels)
    src = open_dataset(f"chexpert:{tmp_path / 'CheXpert-synth'}")
    assert len(src) == 3 and src.table[chex].to_numpy().tolist() == labels.tolist()
    assert set(CHEXPERT_CLASSES) - set(chex) <= set(src.classes)

    classes = ["normal", "pneumonia"]
    labels = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.uint8)
    _write_set(Layout.for_source("folder", classes, {}), tmp_path / "folder", labels)
    src = open_dataset(f"folder:{tmp_path / 'folder'}")
    assert src.classes == classes and src.table[classes].sum().tolist() == [1, 2]

    ct = Layout.for_source("folder", ["bleed"], {}, negative_class="no bleed")
    assert ct.image_paths(np.array([[0], [1]], dtype=np.uint8))[0].startswith("no bleed/")
    # a source column that `csv:` finds only with ?image=COL is not kept: the set must read back unaided
    assert (
        Layout.for_source("csv", ["a"], {}, columns={"image": "img_col", "patient": "PatientID"}).image_column == "path"
    )


def test_csv_source_set_keeps_the_source_columns_and_names_the_negative_class(tmp_path: Path) -> None:
    for i in range(16):
        Image.new("L", (16, 16), color=i * 10).save(tmp_path / f"{i}.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(16)], "patientid": [f"p{i}" for i in range(16)],
                  "bleed": [str(int(i % 3 == 0)) for i in range(16)]}).to_csv(tmp_path / "ct.csv", index=False)  # fmt: skip
    cache = prepare(f"csv:{tmp_path / 'ct.csv'}?negative=no%20bleed", 16, tmp_path / "cache", val=0, test=0, quiet=True)
    common = dict(data=str(cache.path), size=16, steps=1, batch=4, width=8, device="cpu", sample_every=100)
    run = train(TrainConfig(model="cgan", **common), tmp_path / "run", quiet=True)
    out = generate(run, None, tmp_path / "syn", per_class=2, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["negative_class"] == "no bleed" and manifest["counts"] == {"bleed": 2, "no bleed": 2}
    table = pd.read_csv(out / "labels.csv")
    assert list(table.columns) == ["image", "patientid", "bleed"]  # the source's own column names
    assert open_dataset(f"csv:{out / 'labels.csv'}").table["bleed"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_cli_generate_and_export(tmp_path: Path, runs: dict[str, Path]) -> None:
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    runner = CliRunner()
    res = runner.invoke(app, ["generate", str(runs["cgan"]), "--n", "6", "--out", str(tmp_path / "syn"), "--quiet"])
    assert res.exit_code == 0 and len(list((tmp_path / "syn" / "images").iterdir())) == 6
    res = runner.invoke(app, ["export", str(runs["cgan"]), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0 and (tmp_path / "exp" / "generator.safetensors").is_file()
    assert load_generator(tmp_path / "exp").z_dim == 100  # the models package reads it without pickle
    bad = runner.invoke(app, ["generate", str(tmp_path / "exp"), "--n", "2", "--balance", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, ConfigError) and "choose one of --n, --per-class, --balance" in str(bad.exception)
    res = runner.invoke(app, ["generate", str(runs["cgan"]), "--out", str(tmp_path / "dist"), "--quiet"])  # no count
    train = json.loads((runs["cgan"] / "run.json").read_text())["labels"]["train_images"]
    assert res.exit_code == 0 and len(list((tmp_path / "dist" / "images").iterdir())) == train


def test_distribution_plan_has_the_exact_training_composition() -> None:
    """n = the training set's size gives exactly its label combinations (largest remainder, no draw noise)."""
    meta = {"conditional": True, "groups": [{"name": "A", "label": [1, 0], "count": 7}],
            "labels": {"combos": [{"label": [1, 0], "count": 7}, {"label": [0, 1], "count": 2},
                                  {"label": [1, 1], "count": 1}, {"label": [0, 0], "count": 10}]}}  # fmt: skip
    plan = make_plan(meta, 20, None, False, seed=3)
    combos, counts = np.unique(plan.labels, axis=0, return_counts=True)
    assert dict(zip(map(tuple, combos.tolist()), counts.tolist(), strict=True)) == {
        (0, 0): 10, (0, 1): 2, (1, 0): 7, (1, 1): 1}  # fmt: skip
    assert np.bincount(make_plan(meta, 7, None, False, seed=3).labels.sum(axis=1)).tolist() == [
        4,
        3,
    ]  # 2.45/0.7/0.35/3.5 -> 2/1/0/4
    assert not np.array_equal(plan.labels, make_plan(meta, 20, None, False, seed=4).labels)  # seeded order


def _groups_meta(counts: dict[str, int]) -> dict:
    """run.json of a conditional run whose label groups had these training counts (the last: all-zero label)."""
    k = len(counts) - 1
    groups = [{"name": name, "label": [float(j == i) for j in range(k)], "count": c, "dir": "."}
              for i, (name, c) in enumerate(counts.items())]  # fmt: skip
    return {"conditional": True, "groups": groups, "labels": {"combos": []}}


def test_balance_and_per_class_never_draw_a_group_without_training_images() -> None:
    meta = _groups_meta({"Effusion": 40, "Hernia": 0, "Nodule": 25, "normal": 60})
    plan = make_plan(meta, None, None, True, seed=0)
    assert plan.counts(["Effusion", "Hernia", "Nodule"], "normal") == {
        "Effusion": 20, "Hernia": 0, "Nodule": 35, "normal": 0}  # fmt: skip
    assert plan.notes == ["not generating Hernia: the generator saw no training images of it"]
    per = make_plan(meta, None, 5, False, seed=0)
    assert per.counts(["Effusion", "Hernia", "Nodule"], "normal")["Hernia"] == 0 and len(per) == 15
    assert per.notes == plan.notes


def test_balance_on_an_already_balanced_set_writes_a_balanced_set() -> None:
    plan = make_plan(_groups_meta({"a": 30, "b": 30, "none": 30}), None, None, True, seed=0)
    assert plan.counts(["a", "b"], "none") == {"a": 30, "b": 30, "none": 30} and plan.mode == "balance"
    assert "already balanced" in plan.notes[0] and "30 per group" in plan.notes[0]


def test_is_current_until_the_run_trains_further(tmp_path: Path) -> None:
    cache = prepare("phantom?n=64&seed=0", 16, tmp_path / "cache", quiet=True).path
    cfg = TrainConfig(data=str(cache), model="cgan", size=16, steps=2, batch=8, width=8, device="cpu", sample_every=100)
    run = train(cfg, tmp_path / "run", quiet=True)
    assert not is_current(tmp_path / "syn", run)  # nothing drawn yet
    generate(run, 20, tmp_path / "syn", quiet=True)
    assert is_current(tmp_path / "syn", run)
    train(cfg, run, resume=True, quiet=True)  # a finished run resumed: nothing trained, weights unchanged
    assert is_current(tmp_path / "syn", run)
    train(replace(cfg, steps=4), run, resume=True, quiet=True)
    assert not is_current(tmp_path / "syn", run)  # a reuse would evaluate the old weights
    (tmp_path / "syn" / "manifest.json").write_text("{")
    assert not is_current(tmp_path / "syn", run)
