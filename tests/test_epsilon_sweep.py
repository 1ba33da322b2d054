"""`medsyn benchmark --sweep epsilon`: one generator per target epsilon, the same steps and network, evaluated as
--compare does, in one table, CSV, figure and page; resumable; bad points and a missing --steps in one line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medsyn.benchmark import compare
from medsyn.benchmark.epsilon import EpsilonConfig, _row, columns, parse_points, run_epsilon_sweep
from medsyn.cli import app
from medsyn.data.cache import prepare
from medsyn.errors import ConfigError
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.run import read_run_meta

SMOKE_EVAL = {"classifier": {"epochs": 1, "patience": 1, "batch_size": 32}, "utility": {"n_bootstrap": 20},
              "reid": {"epochs": 1, "steps_per_epoch": 5}, "saliency": {"images": 0}, "kid_subsets": 5,
              "samples_per_class": 2}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[EpsilonConfig, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("eps")
    cache = prepare("phantom?n=240&seed=0", 16, root / "cache", quiet=True).path
    cfg = EpsilonConfig(data=str(cache), points=[5.0, math.inf], steps=12, size=16, width=8, batch=16,
                        settings=SMOKE_EVAL)  # fmt: skip
    return cfg, root / "sw", run_epsilon_sweep(cfg, root / "sw", quiet=True)


def test_each_epsilon_trains_the_same_steps_and_network(swept: tuple[EpsilonConfig, Path, dict[str, Any]]) -> None:
    cfg, out, summary = swept
    by = {r["name"]: r for r in summary["points"]}
    assert list(by) == ["eps-inf", "eps-5"] and summary["config"]["points"] == ["∞ (no DP)", "5"]
    for r in by.values():
        assert r["progress"]["steps"] == 12 and r["progress"]["stop_reason"] == "completed"
        assert r["summary"]["ratio"][0] is not None and r["summary"]["membership"]
    dp = by["eps-5"]["differential_privacy"]
    assert 0 < dp["epsilon"] <= dp["target_epsilon"] == 5.0 and dp["noise_multiplier"] > 0 and dp["steps"] == 12
    assert by["eps-inf"]["differential_privacy"] is None
    private, public = read_run_meta(out / "eps-5" / "run"), read_run_meta(out / "eps-inf" / "run")
    assert private["config"]["dp_epsilon"] == 5.0 and private["differential_privacy"] == dp
    assert (
        load_checkpoint(checkpoint_file(out / "eps-5" / "run" / "checkpoints"))["privacy"]["epsilon"] == dp["epsilon"]
    )
    assert json.loads((out / "eps-5" / "synthetic" / "manifest.json").read_text())["differential_privacy"] == dp
    assert public["config"]["dp_epsilon"] is None and "differential_privacy" not in public
    # the no-DP point trains DP's network (GroupNorm discriminator, no minibatch-stddev): only DP-SGD differs
    assert public["config"]["model_extra"] == private["config"]["model_extra"] == {"d_norm": "group", "mbstd": 0}


def test_table_csv_figure_and_page_carry_every_point_and_attack(
    swept: tuple[EpsilonConfig, Path, dict[str, Any]],
) -> None:
    _, out, summary = swept
    metrics = json.loads((out / "eps-5" / "evaluation" / "metrics.json").read_text())
    attacks = [k for k, e in metrics["privacy"]["membership_inference"].items() if "auroc" in e]
    assert attacks
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epsilon_target"] for r in rows] == ["inf", "5"]
    assert rows[0]["epsilon_spent"] == rows[0]["noise_multiplier"] == "" and 0 < float(rows[1]["epsilon_spent"]) <= 5
    for key in attacks:
        name = "mia_" + "_".join(key.split())
        assert all(0 <= float(r[f"{name}_auroc"]) <= 1 for r in rows)
    table = (out / "epsilon.md").read_text()
    assert table.count("\n") == 4 and "| ∞ (no DP) | none | n/a |" in table
    assert all(f"MIA {k}: AUROC" in table for k in attacks)
    assert (out / "epsilon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "epsilon.html").read_text()
    assert "<td><b>∞ (no DP)</b></td><td>none</td>" in page and "<td><b>5</b></td>" in page
    assert all(f"<th>membership inference: {k}</th>" in page for k in attacks)
    assert 'alt="ε = 5 samples" src="data:image/png;base64,' in page and str(out) not in page
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def test_rerun_keeps_finished_points_and_refuses_other_settings(
    swept: tuple[EpsilonConfig, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out, summary = swept
    before = {p: (out / p / "result.json").stat().st_mtime_ns for p in ("eps-inf", "eps-5")}

    def no_training(*args: Any, **kw: Any) -> None:
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(compare, "train", no_training)
    again = run_epsilon_sweep(cfg, out, quiet=True)
    assert [r["summary"] for r in again["points"]] == [r["summary"] for r in summary["points"]]
    fewer = run_epsilon_sweep(EpsilonConfig(**{**vars(cfg), "points": [5.0]}), out, quiet=True)
    assert [r["name"] for r in fewer["points"]] == ["eps-5"]
    assert {p: (out / p / "result.json").stat().st_mtime_ns for p in before} == before
    with pytest.raises(ConfigError, match=r"other settings \(steps\)"):
        run_epsilon_sweep(EpsilonConfig(**{**vars(cfg), "steps": 13}), out, quiet=True)


def test_every_membership_attack_is_read_without_knowing_its_name() -> None:
    """A new attack in metrics.json (here "model") becomes a column of the table and the CSV; a skipped one
    is kept with its reason."""
    mia = {"pixel": {"auroc": 0.51, "ci_low": 0.45, "ci_high": 0.57, "tpr_at_1pct_fpr": None, "space": "pixels",
                     "attack": "distance"},
           "model": {"auroc": 0.73, "ci_low": 0.66, "ci_high": 0.8, "tpr_at_1pct_fpr": 0.05, "space": "cgan",
                     "attack": "discriminator"},
           "feature": {"not_applicable": True, "skipped": "own classifier"}}  # fmt: skip
    summary = compare.summarise({"privacy": {"membership_inference": mia}})
    assert (
        summary["membership"]["model"]["auroc"] == 0.73 and summary["membership"]["model"]["attack"] == "discriminator"
    )
    assert summary["membership"]["feature"] == {"skipped": "own classifier"}
    result = {"name": "eps-1", "side": {"dp_epsilon": 1.0}, "summary": summary, "progress": {}, "generate": {}}
    cols = columns([result])
    assert cols["MIA model: AUROC [95% CI] (TPR@1%FPR)"](result) == "0.730 [0.660, 0.800] (0.050)"
    assert not any("feature" in h for h in cols)
    row = _row(result, ["pixel", "model"])
    assert row["mia_model_auroc"] == 0.73 and row["mia_pixel_tpr_at_1pct_fpr"] is None and row["epsilon_target"] == "1"


def test_bad_points_and_missing_steps_are_one_line_errors(tmp_path: Path) -> None:
    assert parse_points("1, inf,3") == [math.inf, 3.0, 1.0]
    args = ["benchmark", "--data", "phantom?n=60", "--sweep", "epsilon", "--out", str(tmp_path / "o")]
    cases = {"0": "must be positive", "-1": "must be positive", "nan": "must be positive", "abc": "'abc'",
             "5,5": "twice", "inf,inf": "twice", "3,3.0": "twice", ",": "give target epsilons"}  # fmt: skip
    for points, message in cases.items():
        res = CliRunner().invoke(app, [*args, "--points", points, "--steps", "5"])
        assert isinstance(res.exception, ConfigError) and message in str(res.exception), (points, res.output)
        assert "\n" not in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--points", "inf,1"])
    assert isinstance(res.exception, ConfigError) and "needs --steps" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--points", "inf,1", "--steps", "5", "--model", "stylegan2"])
    assert isinstance(res.exception, ConfigError) and "--dp-epsilon supports" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--steps", "5", "--dp-unit", "household"])
    assert isinstance(res.exception, ConfigError) and "dp_unit must be image or patient" in str(res.exception)
    res = CliRunner().invoke(app, [*args[:4], "samples", "--out", str(tmp_path / "s"), "--dp-delta", "1e-5"])
    assert isinstance(res.exception, ConfigError) and "apply to --sweep epsilon" in str(res.exception)
    assert not (tmp_path / "o").exists()  # refused before anything was prepared or trained
