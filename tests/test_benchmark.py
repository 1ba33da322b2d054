"""`medsyn benchmark`: sweep planning (fixed test patients), derived caches, resume, CSV/report, CLI errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_cli
from medsyn.benchmark import SweepConfig, plan_points, run_sweep
from medsyn.benchmark import sweep as sweep_mod
from medsyn.cli import app
from medsyn.cli.options import parse_duration
from medsyn.data.cache import PreparedDataset, prepare, subset
from medsyn.errors import ConfigError, DataError
from medsyn.train import TrainConfig

QUICK = {"classifier": {"model": "smallcnn", "epochs": 1, "patience": 1, "batch_size": 32}, "n_bootstrap": 20}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare("phantom?n=600&seed=0", 16, tmp_path_factory.mktemp("sweep") / "cache", quiet=True)


def tiny(base: PreparedDataset, **kw: object) -> SweepConfig:
    args: dict = dict(data=str(base.path), size=16, steps=20, width=8, batch=16, device="cpu", utility=QUICK)
    args.update(kw)
    return SweepConfig(**args)


def test_subset_keeps_splits_and_is_a_noop_when_repeated(base: PreparedDataset, tmp_path: Path) -> None:
    rows = np.flatnonzero(base.labels[:, base.classes.index("Effusion")] == 1)
    sub = subset(base, rows, ["Effusion", "Nodule"], tmp_path / "sub")
    assert sub.classes == ["Effusion", "Nodule"] and len(sub) == len(rows)
    assert np.array_equal(sub.images[:], base.images[rows])
    assert list(sub.index["split"]) == list(base.index["split"].iloc[rows])
    assert sub.meta["counts"]["train"]["positives"]["Effusion"] == int(
        (base.index["split"].iloc[rows] == "train").sum()
    )
    assert subset(base, rows, ["Effusion", "Nodule"], tmp_path / "sub").meta == sub.meta  # no-op
    with pytest.raises(DataError, match="another cache"):
        subset(base, rows[:5], ["Effusion"], tmp_path / "sub")
    with pytest.raises(ConfigError, match="unknown class"):
        subset(base, rows, ["Atelectasis"], tmp_path / "other")


def test_points_keep_the_test_patients_fixed(base: PreparedDataset) -> None:
    test_ids = set(base.index.loc[base.index["split"] == "test", "patient_id"])
    classes = plan_points(base, tiny(base, sweep="classes"))
    assert [p.value for p in classes] == [2, 4, 5]  # default 2, 4, ... and all K
    assert [len(p.classes) for p in classes] == [2, 4, 5] and classes[0].classes == classes[-1].classes[:2]
    samples = plan_points(base, tiny(base, sweep="samples", points=[10, 40]))
    for p in classes + samples:
        part = base.index.iloc[p.rows]
        assert set(part.loc[part["split"] == "test", "patient_id"]) <= test_ids
    for p in classes + samples:  # val and test are identical at every point; only train is selected/capped
        split = base.index["split"].to_numpy()[p.rows]
        for name in ("val", "test"):
            assert np.array_equal(np.sort(p.rows[split == name]), base.rows(name))
    two = base.index.iloc[classes[0].rows]  # train rows positive only for left-out classes are dropped
    assert not (two.loc[two["split"] == "train", classes[0].classes].sum(axis=1) == 0).all()
    left_out = [c for c in base.classes if c not in classes[0].classes]
    only_left_out = (two[left_out].sum(axis=1) > 0) & (two[classes[0].classes].sum(axis=1) == 0)
    assert not only_left_out[two["split"] == "train"].any() and only_left_out[two["split"] == "test"].any()
    small, large = (base.index.iloc[p.rows] for p in samples)
    assert (small["split"] == "train").sum() < (large["split"] == "train").sum()
    # the rarest class is filled up to the cap (all-negative images count as one more class)
    assert (small.loc[small["split"] == "train", samples[0].classes].sum(axis=0)).min() >= 10


def test_unscorable_or_too_few_classes_are_refused(base: PreparedDataset) -> None:
    with pytest.raises(DataError, match="at least 2 classes"):
        plan_points(base, tiny(base, sweep="classes", classes=["Effusion"]))
    with pytest.raises(ConfigError, match="only 5 can be scored"):
        plan_points(base, tiny(base, sweep="classes", points=[2, 6]))
    with pytest.raises(DataError, match="fewer than 500"):
        plan_points(
            base, tiny(base, sweep="samples", classes=["Effusion"], utility={**QUICK, "min_test_positives": 500})
        )
    with pytest.raises(ConfigError, match="--sweep"):
        tiny(base, sweep="pixels")
    with pytest.raises(ConfigError, match="--augment"):
        tiny(base, augment="mixup")
    with pytest.raises(ConfigError, match="--budget"):
        tiny(base, budget_s=0)


def test_killed_sweep_resumes_and_writes_csv_and_report(
    base: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny(base, sweep="samples", points=[10, 30])
    real_point = sweep_mod.run_point
    calls: list[int] = []

    def killed_on_second(point, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(point.value)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_point(point, *a, **k)

    monkeypatch.setattr(sweep_mod, "run_point", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "sw", quiet=True)
    assert (tmp_path / "sw/points/samples-00010/result.json").is_file()
    assert not (tmp_path / "sw/points/samples-00030/result.json").exists()
    monkeypatch.setattr(
        sweep_mod, "run_point", lambda point, *a, **k: (calls.append(point.value), real_point(point, *a, **k))[1]
    )
    summary = run_sweep(cfg, tmp_path / "sw", quiet=True)
    assert calls == [10, 30, 30]  # the finished point was not run again
    rows = list(csv.DictReader((tmp_path / "sw/results.csv").read_text().splitlines()))
    assert [int(r["point"]) for r in rows] == [10, 30]
    for r, p in zip(rows, summary["points"], strict=True):
        u = p["utility"]
        assert float(r["ratio"]) == pytest.approx(u["tstr"]["mean_auroc"] / u["trtr"]["mean_auroc"], abs=1e-4)
        assert int(r["synthetic_images"]) == int(r["real_train_images"]) == p["real_train_images"]
        assert p["generator"]["steps"] == 20 and p["generator"]["stopped_by"] == "steps"
    html = (tmp_path / "sw/report.html").read_text()
    assert "data:image/png;base64," in html and "TSTR/TRTR" in html
    assert (tmp_path / "sw/sweep.png").read_bytes()[:4] == b"\x89PNG"
    for path in (tmp_path / "sw").rglob("*.json"):  # strict JSON: undefined ratios are null, never NaN
        assert not re.search(r"\b(NaN|Infinity)\b", path.read_text()), path
    assert run_sweep(tiny(base, sweep="samples", points=[10, 30], device="auto", budget_s=600.0), tmp_path / "sw",
                     quiet=True)["points"] == summary["points"]  # fmt: skip
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(tiny(base, sweep="samples", points=[10, 30], steps=25), tmp_path / "sw", quiet=True)


def test_budget_stops_generator_training(base: PreparedDataset, tmp_path: Path) -> None:
    summary = run_sweep(
        tiny(base, sweep="classes", points=[2], steps=100_000, budget_s=0.5), tmp_path / "b", quiet=True
    )
    g = summary["points"][0]["generator"]
    assert g["stopped_by"] == "budget" and 0 < g["steps"] < 100_000 and g["train_s"] >= 0.5


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    assert parse_duration("5m") == 300 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ConfigError, match="duration"):
        parse_duration("soon")
    r = run_cli("benchmark", "--data", "phantom?n=60", "--sweep", "pixels", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--sweep must be one of" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("benchmark", "--data", "phantom?n=60", "--sweep", "samples", "--out", str(tmp_path / "x"),
                "--budget", "soon")  # fmt: skip
    assert r.returncode == 2 and "--budget must be" in r.stderr
    r = run_cli("train", "phantom?n=60", "--out", str(tmp_path / "t"), "--time-limit", "never")
    assert r.returncode == 2 and "--time-limit must be a positive duration" in r.stderr


def test_resume_check_ignores_device_progress_and_budget(base: PreparedDataset) -> None:
    a = tiny(base).to_dict()
    b = tiny(base, device="auto", budget_s=60.0, utility={**QUICK, "classifier": {**QUICK["classifier"], "progress": True,
                                                                                 "device": "cuda"}}).to_dict()  # fmt: skip
    assert sweep_mod._comparable(a) == sweep_mod._comparable(b)
    assert sweep_mod._comparable(a) != sweep_mod._comparable(tiny(base, steps=30).to_dict())
    assert sweep_mod._comparable(a) != sweep_mod._comparable(tiny(base, augment="diffaugment").to_dict())
    before = {k: v for k, v in a.items() if k != "augment"}  # a sweep stored before --augment existed
    assert sweep_mod._comparable(before) == sweep_mod._comparable(a)


def test_unreadable_stored_settings_are_one_line_errors(base: PreparedDataset, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable sweep settings"):
        run_sweep(tiny(base), tmp_path, quiet=True)


def test_sweep_trains_with_a_tuned_config(base: PreparedDataset, tmp_path: Path) -> None:
    """--config (e.g. medsyn tune's best.yaml): every point's generator gets its hyper-parameters, while data,
    classes, seed and schedule stay the sweep's; a rerun with another config is refused."""
    tuned = TrainConfig(data="phantom?n=9", model="cgan", size=16, steps=7, width=8, batch=16, lr_g=1e-4,
                        betas=(0.0, 0.99), ema_decay=0.99, model_extra={"embed_dim": 16}, classes=["Effusion"],
                        seed=5, precision="fp32")  # fmt: skip
    path = tmp_path / "best.yaml"
    path.write_text(tuned.to_yaml())
    cfg = SweepConfig(data=str(base.path), sweep="samples", points=[10], device="cpu", utility=QUICK,
                      train_config=TrainConfig.from_yaml(path).to_dict())  # fmt: skip
    assert (cfg.model, cfg.size, cfg.steps, cfg.width, cfg.batch, cfg.augment) == ("cgan", 16, 7, 8, 16, "none")
    summary = run_sweep(cfg, tmp_path / "sw", quiet=True)
    run = TrainConfig.from_yaml(tmp_path / "sw/points/samples-00010/run/config.yaml")
    assert (run.lr_g, run.betas, run.ema_decay, run.model_extra, run.precision) == (
        1e-4, (0.0, 0.99), 0.99, {"embed_dim": 16}, "fp32"
    )  # fmt: skip
    assert run.seed == 0 and run.classes is None and run.steps == 7 and run.data.endswith("samples-00010/cache")
    assert summary["points"][0]["generator"]["steps"] == 7
    assert SweepConfig(data=str(base.path), sweep="samples", steps=9, train_config=tuned.to_dict()).steps == 9
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(SweepConfig(data=str(base.path), sweep="samples", points=[10], device="cpu", utility=QUICK,
                              train_config={**tuned.to_dict(), "lr_g": 2e-4}), tmp_path / "sw", quiet=True)  # fmt: skip
    with pytest.raises(ConfigError, match="unknown train config key"):
        SweepConfig(data=str(base.path), train_config={"data": "x", "lr": 1})
    res = CliRunner().invoke(app, ["benchmark", "--data", "phantom?n=60", "--compare", "cgan", "--budget", "1m",
                                   "--config", str(path), "--out", str(tmp_path / "c")])  # fmt: skip
    assert isinstance(res.exception, ConfigError) and "--config does not apply to --compare" in str(res.exception)
    res = CliRunner().invoke(app, ["benchmark", "--data", "phantom?n=60", "--compare", "ddpm", "--budget", "1m",
                                   "--classes", "a,b", "--steps", "5", "--out", str(tmp_path / "c")])  # fmt: skip
    assert isinstance(res.exception, ConfigError) and "--classes, --steps do not apply to --compare" in str(res.exception)
    assert "medsyn data prepare --classes" in str(res.exception) and not (tmp_path / "c").exists()


def test_resolution_sweep_trains_each_size_on_the_same_patients(base: PreparedDataset, tmp_path: Path) -> None:
    """--sweep resolution: each point prepares the same data set at its size (same images, patients and splits),
    trains and scores there; results.csv names the size, per_class.csv and the report give TSTR/TRTR per class."""
    with pytest.raises(ConfigError, match="image size 100 unsupported"):
        tiny(base, sweep="resolution", points=[16, 100])
    cfg = tiny(base, sweep="resolution", points=[32, 16])
    assert cfg.points == [16, 32]
    summary = run_sweep(cfg, tmp_path / "res", quiet=True)
    assert [p["size"] for p in summary["points"]] == [16, 32]
    caches = [PreparedDataset(tmp_path / f"res/points/size-{s:04d}/cache") for s in (16, 32)]
    assert [c.size for c in caches] == [16, 32]
    keys = ["source", "patient_id", "split"]
    assert caches[0].index[keys].equals(caches[1].index[keys])
    assert caches[1].index[keys].equals(base.index[keys].reset_index(drop=True))
    assert TrainConfig.from_yaml(tmp_path / "res/points/size-0032/run/config.yaml").size == 32
    rows = list(csv.DictReader((tmp_path / "res/results.csv").read_text().splitlines()))
    assert [(r["point"], r["size"]) for r in rows] == [("16", "16"), ("32", "32")]
    per_class = list(csv.DictReader((tmp_path / "res/per_class.csv").read_text().splitlines()))
    assert {r["class"] for r in per_class} == set(summary["points"][0]["classes"])
    for r in per_class:
        p = summary["points"][[16, 32].index(int(r["point"]))]["utility"]
        trtr, tstr = p["trtr"]["classes"][r["class"]]["auroc"], p["tstr"]["classes"][r["class"]]["auroc"]
        assert float(r["ratio"]) == pytest.approx(tstr / trtr, abs=1e-4)
        assert float(r["ratio_ci_low"]) <= float(r["ratio_ci_high"])  # a paired bootstrap interval per class
    html = (tmp_path / "res/report.html").read_text()
    assert "image size (px)" in html and "Relative performance per class" in html
    moved = PreparedDataset(base.path)
    moved.meta.pop("settings")
    with pytest.raises(DataError, match="no preparation settings"):
        sweep_mod.resized(moved, 32, tmp_path / "x", quiet=True)


def test_sweep_reads_the_classifier_settings_file(base: PreparedDataset, tmp_path: Path) -> None:
    """--settings reaches a sweep's classifiers (a small set needs more epochs than the quick default)."""
    settings = tmp_path / "s.yaml"
    settings.write_text("classifier: {epochs: 2, patience: 1, batch_size: 32}\nutility: {n_bootstrap: 20}\n")
    args = ["benchmark", "--data", str(base.path), "--sweep", "samples", "--points", "10", "--size", "16",
            "--steps", "3", "--width", "8", "--batch", "16", "--device", "cpu", "--quiet", "--settings", str(settings)]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "sw")])  # fmt: skip
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "sw/config.json").read_text())["utility"]
    assert stored["classifier"]["epochs"] == 2 and stored["n_bootstrap"] == 20
    settings.write_text("classifier: {epochz: 2}\n")
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad")])
    assert isinstance(res.exception, ConfigError) and "epochz" in str(res.exception)
