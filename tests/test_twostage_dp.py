"""twostage under --dp-epsilon: both stages spend one privacy account (whichever order they train in), a kill
in either stage resumes exactly, and the synthetic pairs carry the run's epsilon (the painter's mechanism:
test_dp_mechanism.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier
from test_dp import assert_secret_unpublished, fixed_secret  # noqa: F401 (the autouse fixture)
from train_helpers import opacus_epsilon, tiny, whole_and_resumed

from medsyn.data.cache import prepare
from medsyn.generate import generate
from medsyn.train import TrainConfig, train
from medsyn.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=64&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


def dp(cache: Path, **kw: object) -> TrainConfig:
    return tiny(cache, **{"model": "twostage", "steps": 3, "dp_epsilon": 6.0, "dp_delta": 1e-3, **kw})


def meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_both_stages_spend_one_account_and_the_pairs_carry_it(cache: Path, tmp_path: Path) -> None:
    """sigma is calibrated for 3 + 3 steps; Stage I's record counts its 3, the run's all 6 (Opacus' own epsilon
    for them, within the target); both discriminators have GroupNorm; generate's manifest carries the entry."""
    run = train(dp(cache), tmp_path / "run", quiet=True)
    entry, prog = meta(run)["differential_privacy"], meta(run)["progress"]
    sigma, q = entry["noise_multiplier"], entry["sample_rate"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sigma == get_noise_multiplier(target_epsilon=6.0, target_delta=1e-3, sample_rate=q, steps=6)
    assert [s["privacy"]["steps"] for s in prog["stages"]] == [3, 6] and entry["steps"] == 6
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(sigma, q, 6, 1e-3), rel=1e-12) and entry["epsilon"] <= 6.0
    assert prog["stages"][0]["privacy"]["epsilon"] < entry["epsilon"]
    for sub in ("masks", "images"):
        d = load_checkpoint(run / sub / "checkpoints" / "last.pt")["D"]
        assert not any("running_mean" in k for k in d), sub  # no BatchNorm: per-pair normalisation only
    assert set(meta(run)["config"]["model_extra"]) >= {"d_norm", "mbstd"}
    assert meta(run)["config"]["model_extra"]["d_norm"] == "group" and meta(run)["config"]["model_extra"]["mbstd"] == 0
    out = generate(run, 6, tmp_path / "syn", quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["differential_privacy"] == entry and (out / "masks").is_dir()
    assert_secret_unpublished(out, "manifest.json")
    assert_secret_unpublished(run, "run.json", "config.yaml")


@pytest.mark.parametrize("kill_at", [2, 5])  # a step of Stage I (3 steps), of Stage II
def test_a_kill_in_either_stage_resumes_exactly_with_the_same_epsilon(cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      kill_at: int) -> None:  # fmt: skip
    whole, resumed = whole_and_resumed(dp(cache, ckpt_every=1), tmp_path, monkeypatch, kill_at)
    for sub in ("masks", "images"):
        a, b = (load_checkpoint(r / sub / "checkpoints" / "last.pt") for r in (whole, resumed))
        for key in ("G", "G_ema", "D"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (sub, key)
        assert a["privacy"] == b["privacy"], sub
    assert meta(resumed)["differential_privacy"] == meta(whole)["differential_privacy"]
    assert (resumed / "generator.safetensors").read_bytes() == (whole / "generator.safetensors").read_bytes()


def test_stages_trained_one_at_a_time_continue_one_account(cache: Path, tmp_path: Path) -> None:
    """Stage II first, Stage I later: Stage I's steps are added to the account Stage II left, and the run's
    entry is the account after both (not the planned-order last stage's)."""
    run = train(dp(cache, stage="images"), tmp_path / "run", quiet=True)
    assert meta(run)["differential_privacy"]["steps"] == 3
    train(dp(cache, stage="masks"), run, resume=True, quiet=True)
    entry = meta(run)["differential_privacy"]
    masks, images = (load_checkpoint(run / sub / "checkpoints" / "last.pt")["privacy"] for sub in ("masks", "images"))
    assert masks["steps"] == entry["steps"] == 6 and images["steps"] == 3
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(entry["noise_multiplier"], entry["sample_rate"], 6, 1e-3))


def test_patient_level_dp_counts_patients_in_both_stages(cache: Path, tmp_path: Path) -> None:
    run = train(dp(cache, dp_unit="patient", steps=2), tmp_path / "run", quiet=True)
    entry = meta(run)["differential_privacy"]
    patients = load_checkpoint(run / "images" / "checkpoints" / "last.pt")["privacy"]["train_patients"]
    assert entry["unit"].startswith("one patient") and entry["train_patients"] == patients > 0
    assert entry["steps"] == 4 and entry["delta"] == 1e-3
