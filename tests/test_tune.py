"""`medsyn tune`: outputs, resume after a kill, determinism, validation-only objective, pruning, errors, spaces."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from medsyn.cli import app
from medsyn.data.cache import PreparedDataset, prepare
from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.classifier import ClassifierConfig
from medsyn.models import GANConfig, config
from medsyn.models.registry import build_generator
from medsyn.models.spaces import SPACES, space_for
from medsyn.train import TrainConfig
from medsyn.train.run import read_run_meta
from medsyn.tune import TuneConfig, run_tune, tune
from medsyn.tune import trial as trial_mod
from medsyn.tune.objective import Scorer, validation_sets
from medsyn.tune.space import apply, default_values, distributions
from medsyn.tune.study import STUDY_NAME

BASE = {"batch": 16, "width": 8, "precision": "fp32", "log_every": 1, "ckpt_every": 2, "sample_every": 100}
CLASSIFIER = {"epochs": 1, "patience": 1, "batch_size": 32}


def tiny(data: str, **kw: Any) -> TuneConfig:
    args: dict[str, Any] = dict(data=data, model="cgan", trials=3, steps=4, reports=2, size=16, base=BASE, n=48,
                                classifier=CLASSIFIER, startup_trials=3, device="cpu")  # fmt: skip
    args.update(kw)
    return TuneConfig(**args)


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if not t.user_attrs.get("interrupted")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare("phantom?n=320&seed=0", 16, tmp_path_factory.mktemp("tune") / "cache", quiet=True)


@pytest.fixture(scope="module")
def killed_and_resumed(cache: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study killed in trial 1's second stage (left RUNNING, as by SIGKILL), then rerun; every split the
    code asked the cache for and every training call are recorded."""
    out = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    splits: list[str] = []
    rows = PreparedDataset.rows
    mp.setattr(PreparedDataset, "rows", lambda self, split=None: (splits.append(str(split)), rows(self, split))[1])
    calls: list[tuple[str, int, bool]] = []
    real_train = trial_mod.train

    def killing_train(cfg: TrainConfig, run: Path, resume: bool, **kw: Any) -> Path:
        calls.append((run.parent.name, cfg.steps, resume))
        if len(calls) == 4:  # trial 0: 2 stages; trial 1: stage 1, then the kill in stage 2
            raise SystemExit(137)  # not caught by Optuna: the trial stays RUNNING, as after a kill -9
        return real_train(cfg, run, resume, **kw)

    mp.setattr(trial_mod, "train", killing_train)
    with pytest.raises(SystemExit):
        run_tune(tiny(str(cache.path)), out, quiet=True)
    before = load(out)
    states = [t.state for t in before.trials]
    summary = run_tune(tiny(str(cache.path)), out, quiet=True)
    mp.undo()
    return {"out": out, "states_before": states, "calls": calls, "splits": splits, "summary": summary}


def test_killed_study_continues_without_redoing_finished_trials(killed_and_resumed: dict[str, Any]) -> None:
    out, calls = killed_and_resumed["out"], killed_and_resumed["calls"]
    assert killed_and_resumed["states_before"] == [TrialState.COMPLETE, TrialState.RUNNING]
    study = load(out)
    assert [t.state for t in study.trials][:2] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["interrupted"]
    again = study.trials[2]  # the interrupted trial, run again with its parameters and folder
    assert again.user_attrs["resumes"] == 1 and again.params == study.trials[1].params
    assert again.user_attrs["folder"] == "trials/0001"
    after_kill = calls[4:]
    assert all(folder != "0000" for folder, _, _ in after_kill)  # the finished trial was not trained again
    assert after_kill[0] == ("0001", 2, True)  # stage 1 of the interrupted trial: resumed, already done
    assert len(counted(study)) == 3 and study.trials[0].user_attrs["baseline"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted(study))


def test_objective_never_reads_the_test_split(killed_and_resumed: dict[str, Any]) -> None:
    splits = killed_and_resumed["splits"]
    assert "val" in splits and "train" in splits
    assert "test" not in splits and "None" not in splits  # neither the test rows nor all rows


def test_resumed_study_equals_an_uninterrupted_one(
    killed_and_resumed: dict[str, Any], cache: PreparedDataset, tmp_path: Path
) -> None:
    fresh = run_tune(tiny(str(cache.path)), tmp_path / "fresh", quiet=True)
    a, b = counted(load(killed_and_resumed["out"])), load(tmp_path / "fresh").trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]
    assert [t.intermediate_values for t in a] == [t.intermediate_values for t in b]
    assert fresh["best_value"] == killed_and_resumed["summary"]["best_value"]


def test_outputs_and_best_yaml_trains_with_medsyn_train(
    killed_and_resumed: dict[str, Any], cache: PreparedDataset, tmp_path: Path
) -> None:
    out, summary = killed_and_resumed["out"], killed_and_resumed["summary"]
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [r["state"] for r in rows][:2] == ["complete", "fail"] and rows[0]["base_config"] == "1"
    assert float(rows[0]["value"]) == pytest.approx(load(out).trials[0].value, abs=1e-5)
    assert {"param_lr_g", "param_extra.embed_dim", "recall", "coverage", "score_at_50pct"} <= set(rows[0])
    page = (out / "tune.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # history, importance, parallel coordinates, a sample grid
    assert "test split is never read" in page and str(out) not in page
    best = TrainConfig.from_yaml(out / "best.yaml")
    trial = load(out).trials[summary["best_trial"]]
    assert best.lr_g == pytest.approx(trial.params["lr_g"]) and best.model_extra["embed_dim"] == trial.params[
        "extra.embed_dim"
    ]  # fmt: skip
    assert best.data == str(cache.path.absolute())  # the user's data, not a copy under the study folder
    assert best.steps == trial.user_attrs["steps"] and best.time_limit_s is None
    res = CliRunner().invoke(app, ["train", "--config", str(out / "best.yaml"), "--steps", "2", "--out",
                                   str(tmp_path / "run"), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert read_run_meta(tmp_path / "run")["config"]["lr_g"] == pytest.approx(trial.params["lr_g"])


def test_median_pruner_stops_a_trial_below_the_median(
    cache: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([0.9, 0.9, 0.2])  # trial 0: two stages at 0.9; trial 1: 0.2 at its first stage
    monkeypatch.setattr(Scorer, "tstr", lambda self, images, labels: next(scores))
    run_tune(tiny(str(cache.path), trials=2, startup_trials=1), tmp_path, quiet=True)
    first, second = load(tmp_path).trials
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.9)
    assert second.state == TrialState.PRUNED and second.intermediate_values == {50: 0.2}
    assert second.user_attrs["steps"] == 2  # trained the first half of its budget only


def test_bad_input_is_a_one_line_error(cache: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'gan9'"):
        tiny(str(cache.path), model="gan9").train_config()
    with pytest.raises(ConfigError, match="--trials must be at least 1"):
        tiny(str(cache.path), trials=0)
    with pytest.raises(ConfigError, match="give each trial a budget"):
        tiny(str(cache.path), steps=None)
    with pytest.raises(ConfigError, match="budget must be a positive duration"):
        tune(str(cache.path), tmp_path / "b", budget="soon")
    no_val = prepare("phantom?n=120&seed=1", 16, tmp_path / "noval", val=0.0, quiet=True)
    with pytest.raises(DataError, match="no validation split"):
        run_tune(tiny(str(no_val.path)), tmp_path / "nv", quiet=True)
    with pytest.raises(ConfigError, match="other settings"):
        run_tune(tiny(str(no_val.path), steps=8), tmp_path / "nv", quiet=True)
    res = CliRunner().invoke(app, ["tune", "phantom?n=60", "--model", "gan9", "--budget", "1m", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError) and "unknown model 'gan9'" in str(res.exception)
    res = CliRunner().invoke(app, ["tune", "phantom?n=60", "--budget", "soon", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError) and "--budget must be a positive duration" in str(res.exception)


def _model_extra_defaults(model: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The extra options a model uses when none are given (what each model passes to config.validate)."""
    seen: dict[str, Any] = {}
    validate = config.validate

    def spy(cfg: GANConfig, defaults: dict[str, Any]) -> dict[str, Any]:
        seen.update(defaults)
        return validate(cfg, defaults)

    for name, mod in list(sys.modules.items()):
        if name.startswith("medsyn.models.") and mod is not config and getattr(mod, "validate", None) is validate:
            monkeypatch.setattr(mod, "validate", spy)
    build_generator(GANConfig(model, 16, 1, 2, 100, 16, {}))
    return seen


@pytest.mark.parametrize("model", sorted(SPACES))
def test_every_point_of_a_space_is_a_valid_config(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each parameter at each choice (floats at both ends) gives a config `medsyn train` accepts and a model
    that builds; the base config is a point of the space (the study's first trial) and its declared model
    options are the model's own defaults."""
    base = TrainConfig(data="phantom", model=model, size=16, width=16)
    space = space_for(model)
    dists = distributions(space, base)
    defaults = default_values(dists, space, base)
    own = _model_extra_defaults(model, monkeypatch)
    monkeypatch.undo()
    for p in space:
        if p.name.startswith("extra."):
            assert p.default == own[p.name.removeprefix("extra.")], p.name
    plain = {k: v for k, v in defaults.items() if not k.startswith("extra.")}
    assert apply(base, plain).to_dict() == base.resolved().to_dict()
    for name, dist in dists.items():
        for value in getattr(dist, "choices", None) or (dist.low, dist.high):
            cfg = apply(base, {**defaults, name: value})
            if name == "width" or name.startswith("extra."):
                with torch.random.fork_rng():
                    build_generator(GANConfig(model, 16, 1, 2, cfg.z_dim, cfg.width, cfg.model_extra))


def test_privacy_check_fails_copies_and_passes_fresh_images(cache: PreparedDataset, tmp_path: Path) -> None:
    """The optional penalty's check: training images handed back as 'synthetic' fail the pixel DCR check
    against the validation baseline; the validation images themselves (unseen patients) do not."""
    sets = validation_sets(cache, list(cache.classes), 0)
    scorer = Scorer(sets, ClassifierConfig(**CLASSIFIER), tmp_path / "reference")
    copies = sets.train.images[np.arange(len(sets.train))]
    assert scorer.privacy(copies)["privacy"] == "fail"
    assert scorer.privacy(sets.val.images[np.arange(len(sets.val))])["privacy"] != "fail"
    assert set(np.unique(np.concatenate([sets.select.patient_ids, sets.score.patient_ids]))) == set(
        sets.val.patient_ids
    ) and not set(sets.select.patient_ids) & set(sets.score.patient_ids)  # fmt: skip
