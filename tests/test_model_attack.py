"""Model-based membership inference (evaluate --run): a generator trained to memorise a tiny set is caught by
the attack that reads it (the discriminator's score; a diffusion model's denoising loss), the same set-up with
DP-SGD at epsilon = 1 is at chance (its epsilon checked against Opacus' accountant), and `evaluate --run`
puts the attack in metrics.json, the verdicts and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import opacus_epsilon, tiny

from conftest import run_cli
from medsyn.data.cache import PreparedDataset, prepare, subset
from medsyn.errors import DataError
from medsyn.evaluate import evaluate
from medsyn.evaluate.privacy.model_attack import AttackSet, model_inference
from medsyn.evaluate.verdicts import mia_verdict
from medsyn.generate import export, generate
from medsyn.train import train

MEMBERS = 40  # a tiny training set, seen ~400 times in 1,000 steps of 16: the memorisation case
TINY_EVAL = {"classifier": {"epochs": 1}, "reid": {"epochs": 1, "steps_per_epoch": 2}, "utility": {"n_bootstrap": 20},
             "saliency": {"images": 0}, "kid_subsets": 5}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """40 training images of a 400-image phantom, with all its validation and test patients (124 images)."""
    root = tmp_path_factory.mktemp("attack")
    ds = prepare("phantom?n=400&seed=0", 16, root / "full", quiet=True)
    rows = np.concatenate([ds.rows("train")[:MEMBERS], ds.rows("val"), ds.rows("test")])
    return subset(ds, rows, list(ds.classes), root / "small")


def sets(ds: PreparedDataset) -> tuple[AttackSet, AttackSet]:
    ids = ds.index["patient_id"].astype(str).to_numpy()
    train_rows, held = ds.rows("train"), np.concatenate([ds.rows("val"), ds.rows("test")])
    return AttackSet(train_rows, ids[train_rows]), AttackSet(held, ids[held])


@pytest.fixture(scope="module")
def gan_run(cache: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    train(tiny(cache.path, steps=1000, batch=16, width=16, ckpt_every=1000, log_every=100), run, quiet=True)
    return run


def test_memorising_gan_is_caught_and_dp_at_epsilon_1_brings_it_to_chance(
    cache: PreparedDataset, gan_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, non_members = sets(cache)
    leaky = model_inference(gan_run, cache, members, non_members, n_bootstrap=200)
    assert leaky.attack == "discriminator" and leaky.n_members == MEMBERS and leaky.n_non_members == 124
    assert leaky.ci_low > 0.6, leaky  # measured 0.747 [0.657, 0.845]

    monkeypatch.setattr("medsyn.train.privacy.new_secret", lambda: 0x5EC7E7)  # a fixed noise stream for the test
    private = tmp_path / "dp"
    train(tiny(cache.path, steps=1000, batch=16, width=16, ckpt_every=1000, log_every=100, dp_epsilon=1.0,
               dp_delta=1e-3), private, quiet=True)  # fmt: skip
    dp = model_inference(private, cache, members, non_members, n_bootstrap=200)
    assert dp.ci_low < 0.5 < dp.ci_high and abs(dp.auroc - 0.5) < 0.1, dp  # measured 0.529 [0.374, 0.683]
    entry = json.loads((private / "run.json").read_text())["differential_privacy"]
    assert entry["steps"] == 1000 and entry["sample_rate"] == 16 / MEMBERS
    assert entry["epsilon"] <= 1.0
    assert entry["epsilon"] == pytest.approx(opacus_epsilon(entry["noise_multiplier"], 16 / MEMBERS, 1000, 1e-3),
                                             rel=1e-12)  # fmt: skip


def test_memorising_ddpm_is_caught_by_its_denoising_loss(cache: PreparedDataset, tmp_path: Path) -> None:
    run = tmp_path / "ddpm"
    extra = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}
    train(tiny(cache.path, model="ddpm", steps=400, batch=16, width=16, ckpt_every=400, log_every=100,
               model_extra=extra), run, quiet=True)  # fmt: skip
    members, non_members = sets(cache)
    res = model_inference(run, cache, members, non_members, n_bootstrap=200)
    assert res.attack == "denoising loss" and res.n_synthetic == 0
    assert res.ci_low > 0.55, res  # measured 0.776 [0.680, 0.870]
    again = model_inference(run, cache, members, non_members, n_bootstrap=200)
    assert np.array_equal(again.member_scores, res.member_scores)  # fixed noise and timesteps: deterministic


def test_memorising_painter_is_caught_by_its_reconstruction_loss(cache: PreparedDataset, tmp_path: Path) -> None:
    """twostage: an image painted from a training patient's own mask is closer to that patient's image. The
    memorising case is pix2pix's deterministic painter (style_dim 0; on the covid collection's 90 lung-masked
    training images: AUROC 0.978 [0.935, 1.0]); the default painter with a style code is scored on its mean
    painting over fixed codes."""
    run = train(tiny(cache.path, model="twostage", steps=300, batch=16, width=16, ckpt_every=300, log_every=100,
                     model_extra={"style_dim": 0}), tmp_path / "ts", quiet=True)  # fmt: skip
    res = model_inference(run, cache, *sets(cache), n_bootstrap=200)
    assert res.attack == "reconstruction loss" and res.n_members == MEMBERS
    assert res.ci_low > 0.55, res
    assert mia_verdict(res).level in ("warn", "fail") and "reconstruction loss" in mia_verdict(res).check


def test_evaluate_with_run_reports_the_attack(cache: PreparedDataset, gan_run: Path, tmp_path: Path) -> None:
    generate(gan_run, 40, tmp_path / "syn", quiet=True)
    m = evaluate(cache.path, tmp_path / "syn", tmp_path / "eval", quick=True, device="cpu", settings=TINY_EVAL,
                 quiet=True, run=gan_run)  # fmt: skip
    entry = m["privacy"]["membership_inference"]["model"]
    assert entry["attack"] == "discriminator" and entry["space"] == "cgan run" and entry["ci_low"] > 0.6
    check = next(c for c in m["privacy"]["checks"] if c["check"] == "membership inference, discriminator (cgan run)")
    assert check["level"] == "warn" and "not shared" in check["reason"]  # capped: the discriminator is not released
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "discriminator (cgan run)" in html and "density ratio (pixels16)" in html


def test_model_attack_refusals(cache: PreparedDataset, gan_run: Path, tmp_path: Path) -> None:
    members, non_members = sets(cache)
    exported = export(gan_run, tmp_path / "exported")
    with pytest.raises(DataError, match="without its discriminator"):
        model_inference(exported, cache, members, non_members)
    big = prepare("phantom?n=400&seed=0", 32, tmp_path / "c32", quiet=True)
    with pytest.raises(DataError, match="--size 16"):
        model_inference(gan_run, big, *sets(big))
    with pytest.raises(DataError, match="not a medsyn run"):
        model_inference(tmp_path, cache, members, non_members)
    result = run_cli("evaluate", "--real", str(cache.path), "--synthetic", str(tmp_path), "--out", str(tmp_path / "e"),
                     "--run", str(tmp_path / "nowhere"))  # fmt: skip
    assert result.returncode != 0 and "not a medsyn run" in result.stderr and "Traceback" not in result.stderr
