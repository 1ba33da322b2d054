"""Differentially private training (--dp-epsilon): the epsilon record, Opacus' own figures, exact resume, the
budget stop, the divergence guard, what is released when, the secret, Poisson batches, one-line refusals and the
synthetic manifest (the mechanism's own tests: test_dp_mechanism.py)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier
from train_helpers import kill_at_step, opacus_epsilon, tiny

from conftest import run_cli
from medsyn.data.cache import prepare
from medsyn.errors import ConfigError
from medsyn.generate import export, generate
from medsyn.report.html import dp_text
from medsyn.train import TrainConfig, dp_objectives, train
from medsyn.train import trainer as trainer_module
from medsyn.train.checkpoint import load_checkpoint
from medsyn.train.data import PoissonBatches
from medsyn.train.distributed import DistInfo
from medsyn.train.privacy import DPAccount

SECRET = 0x5EC7E7C0FFEE5EC7E7C0FFEE5EC7E7C1  # the tests' noise secret (a run draws 128 bits from the OS)
DDPM_TINY = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=200&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


@pytest.fixture(autouse=True)
def fixed_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The noise seed is a fresh OS secret per run; two runs compared here share one instead."""
    monkeypatch.setattr("medsyn.train.privacy.new_secret", lambda: SECRET)


def dp(cache: Path, **kw: object) -> TrainConfig:
    return tiny(cache, **{"steps": 6, "ckpt_every": 3, "dp_epsilon": 4.0, "dp_delta": 1e-3, **kw})


def assert_secret_unpublished(folder: Path, *expected: str) -> None:
    """The noise secret appears, in hex or decimal, in no published file of `folder` (run.json, manifest,
    generator.json, losses.csv, config.yaml; `expected` must be among them); the checkpoints keep it."""
    published = [f for f in folder.rglob("*") if f.suffix in (".json", ".csv", ".yaml") and f.is_file()]
    assert set(expected) <= {f.name for f in published}
    for f in published:
        text = f.read_text().lower()
        assert f"{SECRET:x}" not in text and str(SECRET) not in text, f


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "losses.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def cgan_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("medsyn.train.privacy.new_secret", lambda: SECRET)
        return train(dp(cache), tmp_path_factory.mktemp("dp") / "cgan", quiet=True)


def test_dp_cgan_records_epsilon_everywhere_within_target(cgan_run: Path) -> None:
    meta = json.loads((cgan_run / "run.json").read_text())
    entry = meta["differential_privacy"]
    assert entry == meta["progress"]["privacy"] and meta["progress"]["stop_reason"] == "completed"
    assert 0 < entry["epsilon"] <= entry["target_epsilon"] == 4.0 and entry["delta"] == 1e-3 and entry["steps"] == 6
    assert entry["train_images"] == 136 and entry["sample_rate"] == 8 / 136 and entry["max_grad_norm"] == 1.0
    ck = load_checkpoint(cgan_run / "checkpoints" / "last.pt")  # weights_only=True: plain numbers only
    assert ck["privacy"]["history"] == [[entry["noise_multiplier"], entry["sample_rate"], 6]]
    assert ck["privacy"]["epsilon"] == entry["epsilon"] and ck["privacy"]["secret"] == f"{SECRET:032x}"
    assert_secret_unpublished(cgan_run, "run.json", "losses.csv", "config.yaml")
    eps = [float(r["epsilon"]) for r in rows(cgan_run)]
    assert len(eps) == 6 and all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert math.isclose(eps[-1], entry["epsilon"], rel_tol=1e-5)  # losses.csv keeps 6 significant digits
    # the discriminator is per image: GroupNorm (no batch statistics) and no minibatch-stddev channel
    config = meta["config"]
    assert config["model_extra"] == {"d_norm": "group", "mbstd": 0} and config["dp_max_grad_norm"] == 1.0
    assert not any("running_mean" in k for k in ck["D"])
    # Poisson batches: the number of real images per step varies (q N = 8 on average)
    seen = [0] + [int(r["images"]) for r in rows(cgan_run)]
    assert len({b - a for a, b in zip(seen, seen[1:], strict=False)}) > 1 and seen[-1] == meta["progress"]["images_seen"]


def test_epsilon_and_noise_are_opacus_own(cgan_run: Path) -> None:
    """The recorded epsilon is what a fresh Opacus RDPAccountant gives for the same (sigma, q, steps), and sigma
    is what Opacus' get_noise_multiplier calibrates for the target."""
    entry = json.loads((cgan_run / "run.json").read_text())["differential_privacy"]
    sigma, q = entry["noise_multiplier"], entry["sample_rate"]
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(sigma, q, 6, 1e-3), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sigma == get_noise_multiplier(target_epsilon=4.0, target_delta=1e-3, sample_rate=q, steps=6)


def test_resume_with_more_steps_stops_at_the_budget(cgan_run: Path, tmp_path: Path) -> None:
    """sigma was calibrated for 6 steps, so --resume to 40 steps takes no step that would overspend epsilon."""
    run = Path(shutil.copytree(cgan_run, tmp_path / "more"))
    cfg = TrainConfig.from_dict({**json.loads((run / "run.json").read_text())["config"], "steps": 40})
    train(cfg, run, resume=True, quiet=True)
    prog = json.loads((run / "run.json").read_text())["progress"]
    entry = prog["privacy"]
    assert prog["stop_reason"] == "privacy-budget" and prog["steps"] == entry["steps"] >= 6
    sigma, q, n = entry["noise_multiplier"], entry["sample_rate"], entry["steps"]
    assert entry["epsilon"] <= 4.0 < opacus_epsilon(sigma, q, n + 1, 1e-3)  # one more step would overspend
    # mid-run: an account calibrated for fewer steps stops where Opacus says the budget ends
    account = DPAccount(4.0, 1e-3, 1.0, n_train=136, batch=8, noise_multiplier=2.0)
    k = account.steps_left(10_000)
    assert 0 < k < 10_000 and opacus_epsilon(2.0, 8 / 136, k, 1e-3) <= 4.0 < opacus_epsilon(2.0, 8 / 136, k + 1, 1e-3)


def test_kill_and_resume_is_exact_with_the_same_epsilon(cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cfg = dp(cache, model="acgan", steps=6, ckpt_every=4, augment="diffaugment")
    whole = train(cfg, tmp_path / "whole", quiet=True)
    kill_at_step(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", quiet=True)
    monkeypatch.undo()  # a fresh OS secret now: the resumed run must take the one in its checkpoint
    resumed = train(None, tmp_path / "killed", resume=True, quiet=True)
    assert rows(resumed) == rows(whole)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (whole, resumed))
    for part in ("G", "D", "G_ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert a["privacy"] == b["privacy"] and a["images_seen"] == b["images_seen"]


def test_private_outputs_are_released_only_with_their_checkpoint(cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A kill at step 5 (checkpoint at 3) leaves no loss row or sample grid of steps 4-5, which the resumed run
    re-takes with the same noise; sample grids due at step 2 wait for the step-3 checkpoint."""
    cfg = dp(cache, steps=6, ckpt_every=3, sample_every=2, log_every=1)
    kill_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", quiet=True)
    assert [r["step"] for r in rows(tmp_path / "run")] == ["1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-0000003.png"]
    monkeypatch.undo()
    run = train(None, tmp_path / "run", resume=True, quiet=True)
    assert [r["step"] for r in rows(run)] == [str(i) for i in range(1, 7)]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000003.png", "step-0000006.png"]


def test_rolled_back_steps_stay_spent(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A NaN in a public quantity (the generator's loss on the generated batch) at step 3 rolls back to the step-2
    checkpoint; the discarded noisy step still counts, so the budget calibrated for 4 steps ends one step early."""
    g_loss, calls = dp_objectives.losses.g_loss, {"n": 0}

    def nan_once_at_step_3(kind: str, logits: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return g_loss(kind, logits) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(dp_objectives.losses, "g_loss", nan_once_at_step_3)
    run = train(dp(cache, steps=4, ckpt_every=2), tmp_path / "run", quiet=True)
    assert "g_loss" not in (err := capsys.readouterr().err) and "rolled back to step 2" in err
    assert "non-finite weights or generated-batch loss at step 3" in err
    prog = json.loads((run / "run.json").read_text())["progress"]
    entry = prog["privacy"]
    assert prog["stop_reason"] == "privacy-budget" and prog["steps"] == 3 and entry["steps"] == 4
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(entry["noise_multiplier"], 8 / 136, 4, 1e-3), rel=1e-12)
    assert entry["epsilon"] <= 4.0


def test_a_real_images_infinite_loss_neither_rolls_back_nor_spreads(cache: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """One real image's infinite loss at step 3: its gradient is dropped, the noised update stays finite, and the
    guard (public quantities only) does not roll back on the unnoised real-image loss."""
    real_term, calls = dp_objectives.real_d_term, {"n": 0}

    def inf_for_one_image_at_step_3(kind: str, logits: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = real_term(kind, logits)
        if calls["n"] == 3:
            out = out * torch.tensor([float("inf")] + [1.0] * (len(out) - 1))
        return out

    monkeypatch.setattr(dp_objectives, "real_d_term", inf_for_one_image_at_step_3)
    run = train(dp(cache, steps=4, ckpt_every=2), tmp_path / "run", quiet=True)
    assert "rolled back" not in capsys.readouterr().err
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert prog["stop_reason"] == "completed" and prog["steps"] == prog["privacy"]["steps"] == 4
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for part in ("D", "G") for v in ck[part].values() if v.is_floating_point())
    assert not np.isfinite(float(rows(run)[2]["d_loss"]))  # the unnoised log (not covered) shows it; nothing else


def test_poisson_batches_vary_and_continue_after_a_resume() -> None:
    stream = iter(PoissonBatches(1000, 0.05, seed=7))
    batches = [next(stream) for _ in range(40)]
    sizes = [len(b) for b in batches]
    assert len(set(sizes)) > 5 and abs(np.mean(sizes) - 50) < 5 and all(b == sorted(set(b)) for b in batches)
    later = iter(PoissonBatches(1000, 0.05, seed=7, start_step=30))
    assert [next(later) for _ in range(10)] == batches[30:]
    assert next(iter(PoissonBatches(10, 1e-9, seed=0))) == []  # an empty draw is a batch too


def test_dp_ddpm_trains_its_denoiser_privately(cache: Path, tmp_path: Path) -> None:
    run = train(dp(cache, model="ddpm", steps=3, model_extra=DDPM_TINY), tmp_path / "ddpm", quiet=True)
    entry = json.loads((run / "run.json").read_text())["differential_privacy"]
    assert entry["steps"] == 3 and 0 < entry["epsilon"] <= 4.0
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(entry["noise_multiplier"], 8 / 136, 3, 1e-3), rel=1e-12)
    assert all(np.isfinite(float(r["loss"])) for r in rows(run))


def test_patient_level_dp_draws_whole_patients_and_counts_patients(cache: Path, tmp_path: Path) -> None:
    """--dp-unit patient: each of the 34 training patients (4 images each) is drawn with q = batch / N and brings
    all their images; the accountant and the default delta count patients."""
    run = train(dp(cache, steps=3, dp_unit="patient", dp_delta=None), tmp_path / "run", quiet=True)
    meta = json.loads((run / "run.json").read_text())
    entry = meta["differential_privacy"]
    assert entry["unit"] == "one patient (all of their images)" and entry["train_patients"] == 34
    assert entry["train_images"] == 136 and entry["sample_rate"] == 8 / 136 and entry["delta"] == 0.1 / 34
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(entry["noise_multiplier"], 8 / 136, 3, 0.1 / 34), rel=1e-12)
    seen = [0] + [int(r["images"]) for r in rows(run)]
    assert all((b - a) % 4 == 0 for a, b in zip(seen, seen[1:], strict=False)) and seen[-1] > 0
    assert meta["config"]["dp_unit"] == "patient" and "per patient;" in dp_text(entry)


@pytest.mark.parametrize("kw,match", [
    ({"dp_epsilon": 0.0}, "dp_epsilon must be a positive number"),
    ({"dp_epsilon": float("inf")}, "dp_epsilon must be a positive number"),
    ({"dp_delta": 1.0}, r"dp_delta must be in \(0, 1\)"),
    ({"dp_delta": 0.0}, r"dp_delta must be in \(0, 1\)"),
    ({"dp_max_grad_norm": 0.0}, "dp_max_grad_norm must be a positive number"),
    ({"dp_epsilon": None, "dp_delta": 1e-5}, "need dp_epsilon"),
    ({"dp_epsilon": None, "dp_unit": "patient"}, "need dp_epsilon"),
    ({"dp_unit": "study"}, "dp_unit must be image or patient"),
    ({"model": "stylegan2"}, "--dp-epsilon supports: cgan, acgan, ddpm, twostage; not stylegan2"),
    ({"model": "ldm"}, "--dp-epsilon supports: .*autoencoder reads the real images"),
    ({"model": "dcgan"}, "--dp-epsilon supports: .*one generator per class"),
    ({"model_extra": {"mbstd": 4}}, "mbstd: 0 .*mixes the images of a batch"),
    ({"augment": "ada"}, "augment ada"),
    ({"r1_gamma": 1.0}, "R1"),
    ({"loss": "wgan-gp"}, "double backward"),
    ({"precision": "fp16"}, "fp16"),
    ({"model_extra": {"d_norm": "batch"}}, "discriminator is not DP-compatible: Opacus says 'BatchNorm cannot"),
    ({"model_extra": {"d_norm": "spectral"}}, "discriminator is not DP-compatible: .*trainable layer with buffers"),
    ({"model": "twostage", "model_extra": {"d_norm": "batch"}}, "mask discriminator is not DP-compatible: .*BatchNorm"),
    ({"model": "twostage", "model_extra": {"style_dim": 2}}, "style code .* painted twice per step"),
    ({"batch": 200}, "larger than the 136 training images"),
])  # fmt: skip
def test_what_dp_cannot_train_is_refused_in_one_line(cache: Path, tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        train(dp(cache, **kw), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run" / "checkpoints").exists()


def test_dp_under_torchrun_is_refused(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "init_distributed", lambda cuda: DistInfo(rank=0, world=2))
    with pytest.raises(ConfigError, match="one process"):
        train(dp(cache), tmp_path / "run", quiet=True)


def test_cli_flags_yaml_round_trip_and_one_line_error(cache: Path, tmp_path: Path) -> None:
    cfg = dp(cache, dp_max_grad_norm=0.5).resolved()
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg and cfg.dp_epsilon == 4.0
    bad = run_cli("train", str(cache), "--size", "16", "--dp-epsilon", "-1", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "dp_epsilon must be a positive number" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_synthetic_manifest_generator_json_and_report_carry_the_dp_entry(cgan_run: Path, tmp_path: Path) -> None:
    entry = json.loads((cgan_run / "run.json").read_text())["differential_privacy"]
    out = generate(cgan_run, 16, tmp_path / "syn", quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["differential_privacy"] == entry == manifest["training"]["privacy"]
    exported = export(cgan_run, tmp_path / "export")
    assert json.loads((exported / "generator.json").read_text())["differential_privacy"] == entry
    assert json.loads((exported / "run.json").read_text())["differential_privacy"] == entry
    assert_secret_unpublished(out, "manifest.json")
    assert_secret_unpublished(exported, "generator.json", "run.json")
    again = json.loads((generate(exported, 16, tmp_path / "syn2", quiet=True) / "manifest.json").read_text())
    assert again["differential_privacy"] == entry
    text = dp_text(manifest["differential_privacy"])
    shown = text.split("ε = ")[1].split(",")[0]
    assert f"trained with (ε, δ)-DP: ε = {shown}, δ = 0.001" in text and dp_text(None) == ""
    assert float(shown) >= entry["epsilon"] and float(shown) == pytest.approx(entry["epsilon"], rel=1e-2)
    # the privacy filter chooses images by their distance to training images: the guarantee no longer covers them
    filtered = generate(cgan_run, 16, tmp_path / "filtered", quiet=True, privacy_filter=True)
    dp_filtered = json.loads((filtered / "manifest.json").read_text())["differential_privacy"]
    assert dp_filtered["holds_for_this_set"] is False and "not for this set" in dp_text(dp_filtered)
