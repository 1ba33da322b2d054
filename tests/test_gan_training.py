"""GAN training details that decide mode collapse (issue 11): the EMA generator is what is sampled and exported,
ADA's probability survives a resume, R1 is computed on real images only."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from train_helpers import tiny

from medsyn.data.cache import prepare
from medsyn.generate.core import generator_files
from medsyn.train import train
from medsyn.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=64&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


def test_generate_and_export_load_the_ema_generator(tmp_path: Path, cache: Path) -> None:
    run = train(tiny(cache, steps=4), tmp_path / "run", quiet=True)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    _, files = generator_files(run)
    G = files[0].load()
    assert not G.training
    loaded = G.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ck["G_ema"].items())
    assert any(not torch.equal(ck["G"][k], v) for k, v in ck["G_ema"].items())  # EMA weights are not G's


def test_ada_probability_is_checkpointed_and_resumed(tmp_path: Path, cache: Path) -> None:
    """ada_target -1: D always 'overfits', so p rises every 4 steps; the checkpoint holds it, resume keeps it."""
    cfg = tiny(cache, steps=8, ckpt_every=4, augment="ada", ada_target=-1.0)
    run = train(cfg, tmp_path / "run", quiet=True)
    p = load_checkpoint(run / "checkpoints" / "last.pt")["augment"]["p"]
    assert p > 0
    with open(run / "losses.csv", newline="") as fh:
        assert float(list(csv.DictReader(fh))[-1]["aug_p"]) == pytest.approx(p)
    train(tiny(cache, steps=12, ckpt_every=4, augment="ada", ada_target=-1.0), run, resume=True, quiet=True)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["augment"]["p"] == pytest.approx(p * 12 / 8)


def test_r1_penalty_is_on_real_images_with_lazy_scaling(tmp_path: Path, cache: Path, monkeypatch) -> None:
    """R1 (lazy) runs every r1_every steps, on the real batch of that step (before augmentation)."""
    from medsyn.train import gan, losses

    seen: list[torch.Tensor] = []
    r1 = losses.r1_penalty

    def spy(logits: torch.Tensor, real: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        seen.append(real.detach().clone())
        return r1(logits, real, scale)

    monkeypatch.setattr(gan.losses, "r1_penalty", spy)
    batches: list[torch.Tensor] = []
    step = gan.GANObjective.train_step

    def record(self, real, y, i):  # noqa: ANN001, ANN202
        batches.append(real.detach().clone())
        return step(self, real, y, i)

    monkeypatch.setattr(gan.GANObjective, "train_step", record)
    cfg = tiny(cache, steps=4, r1_gamma=1.0, r1_every=2, model_extra={"d_norm": "none"})
    train(cfg, tmp_path / "run", quiet=True)
    assert len(seen) == 2 and torch.equal(seen[0], batches[0]) and torch.equal(seen[1], batches[2])
