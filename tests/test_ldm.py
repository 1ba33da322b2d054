"""Latent diffusion (`--model ldm`): the model, both training stages, exact resume of each, time split, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from train_helpers import one_second_per_step, tiny, whole_and_resumed

from medsyn.data.cache import prepare
from medsyn.errors import ConfigError
from medsyn.generate import export, generate
from medsyn.models import GANConfig, load_generator, save_generator
from medsyn.models.ldm import LatentDiffusionGenerator
from medsyn.models.registry import build_generator
from medsyn.train import train
from medsyn.train.checkpoint import load_checkpoint

K = 3
LDM_TINY = {"res_blocks": 1, "ddim_steps": 2, "ae_steps": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=64&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in csv.DictReader(fh)]


def model(size: int = 16, **extra: object) -> LatentDiffusionGenerator:
    torch.manual_seed(0)
    G = build_generator(GANConfig("ldm", size, 1, K, width=8, extra={**LDM_TINY, **extra}))
    assert isinstance(G, LatentDiffusionGenerator)
    with torch.no_grad():  # MONAI zero-initialises output convs; random weights make the label matter
        for p in G.net.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return G.eval()


def test_generator_decodes_latent_noise_deterministically_and_round_trips(tmp_path: Path) -> None:
    G = model(28)
    assert G.shape == (3, 14, 14) and G.z_dim == 3 * 14 * 14  # f = 2 at 28 px, 2-level UNet on 14 px latents
    assert G.opts["mult"] == [1, 2] and G.opts["attention"] == [False, True]
    assert [p.requires_grad for p in G.autoencoder.parameters()] == [False] * len(list(G.autoencoder.parameters()))
    y = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    G.set_autoencoder(G.autoencoder.state_dict(), torch.rand(8, 1, 28, 28) * 2 - 1)
    z = torch.randn(2, G.z_dim)
    a = G(z, y)
    assert a.shape == (2, 1, 28, 28) and a.abs().max() <= 1 and torch.equal(a, G(z, y))
    assert not torch.allclose(a, G(z, y.flip(0)))  # the label reaches the image
    save_generator(G, tmp_path)
    G2 = load_generator(tmp_path)
    assert isinstance(G2, LatentDiffusionGenerator) and float(G2.scale_factor) == float(G.scale_factor) != 1.0
    assert torch.equal(a, G2(z, y))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"size": 28, "extra": {"ae_mult": [1, 2, 2, 2]}}, "not divisible by the autoencoder's downsampling 8"),
        ({"size": 28, "extra": {"mult": [1, 2, 2], "attention": [False, False, True]}}, "latent size 14"),
        ({"width": 12}, "norm_groups"),
        ({"extra": {"ae_share": 1.0}}, "ae_share"),
        ({"extra": {"ae_steps": 0}}, "ae_steps"),
        ({"extra": {"latent_channels": 0}}, "latent_channels"),
    ],
)
def test_impossible_configs_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_generator(GANConfig(**{"name": "ldm", "size": 16, "num_classes": K, "width": 8, **kw}))
    assert "\n" not in str(err.value)


def test_trains_both_stages_generates_and_exports(tmp_path: Path, cache: Path) -> None:
    run = train(tiny(cache, model="ldm", model_extra=LDM_TINY, sample_every=2), tmp_path / "run", quiet=True)
    for name in ("autoencoder/checkpoints/last.pt", "autoencoder/losses.png", "autoencoder/samples/step-0000003.png",
                 "checkpoints/last.pt", "losses.png", "samples/step-0000004.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert [r["step"] for r in rows(run / "autoencoder/losses.csv")] == ["1", "2", "3"]
    assert set(rows(run / "autoencoder/losses.csv")[0]) >= {"l1", "kl_term"}
    prog = json.loads((run / "run.json").read_text())["progress"]
    ae, dn = prog["stages"]
    assert (ae["stage"], ae["steps"], dn["stage"], dn["steps"], prog["steps"]) == ("autoencoder", 3, "denoiser", 4, 4)
    assert prog["train_seconds"] == pytest.approx(ae["train_seconds"] + dn["train_seconds"], abs=0.01)
    ae_ck, dn_ck = (
        load_checkpoint(run / "autoencoder/checkpoints/last.pt"),
        load_checkpoint(run / "checkpoints/last.pt"),
    )
    for k, v in ae_ck["G_ema"].items():  # the denoiser stage uses the autoencoder's final EMA weights, frozen
        assert torch.equal(dn_ck["G"][f"autoencoder.{k}"], v) and torch.equal(dn_ck["G_ema"][f"autoencoder.{k}"], v)
    assert float(dn_ck["G_ema"]["scale_factor"]) != 1.0
    a = generate(run, 6, tmp_path / "a", quiet=True, ddim_steps=1)
    b = generate(export(run, tmp_path / "exported"), 6, tmp_path / "b", quiet=True, ddim_steps=1)
    assert json.loads((a / "manifest.json").read_text())["sampling"]["ddim_steps"] == 1
    for png in sorted((a / "images").iterdir()):
        assert png.read_bytes() == (b / "images" / png.name).read_bytes()


@pytest.mark.parametrize("kill_at", [2, 5])  # a step of the autoencoder stage (3 steps), of the denoiser's
def test_each_stage_resumes_exactly_after_a_kill(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                 kill_at: int) -> None:  # fmt: skip
    cfg = tiny(cache, model="ldm", model_extra=LDM_TINY, steps=3)
    whole, resumed = whole_and_resumed(cfg, tmp_path, monkeypatch, kill_at)
    for sub in ("autoencoder", "."):
        assert rows(resumed / sub / "losses.csv") == rows(whole / sub / "losses.csv")
        a, b = (load_checkpoint(r / sub / "checkpoints/last.pt") for r in (whole, resumed))
        assert all(torch.equal(a["G_ema"][k], b["G_ema"][k]) for k in a["G_ema"])
        assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_time_limit_is_split_between_the_stages(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake clock, 1 s per step: an 8 s limit gives the autoencoder 2 s (ae_share 0.25) and the denoiser the
    rest; a resume with a larger limit continues the denoiser only."""
    one_second_per_step(monkeypatch)
    cfg = tiny(cache, model="ldm", model_extra={"res_blocks": 1, "ddim_steps": 1}, steps=100, ckpt_every=50)
    run = train(cfg, tmp_path / "run", quiet=True, time_limit_s=8)
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert [(s["steps"], s["stop_reason"]) for s in prog["stages"]] == [(2, "time-limit"), (6, "time-limit")]
    assert prog["train_seconds"] == pytest.approx(8.0) and prog["stop_reason"] == "time-limit"
    train(None, run, resume=True, quiet=True, time_limit_s=10)
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert [s["steps"] for s in prog["stages"]] == [2, 8]


def test_impossible_run_fails_before_the_run_folder_is_written(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="downsampling 32"):
        train(tiny(cache, model="ldm", model_extra={"ae_mult": [1, 2, 2, 2, 2, 2]}), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
