"""Diffusion model (models/diffusion.py): multi-hot conditioning, null label, DDIM determinism, save/load."""

from __future__ import annotations

import pytest
import torch

from medsyn.errors import ConfigError
from medsyn.models import GANConfig, build_gan, load_generator, save_generator
from medsyn.models.diffusion import NULL_FILL, DiffusionGenerator, MultiHotEmbedding
from medsyn.models.registry import build_generator

K = 3
TINY = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 4}


def tiny(size: int = 16, channels: int = 1, num_classes: int = K, **extra: object) -> DiffusionGenerator:
    """A tiny denoiser with random weights everywhere: MONAI zero-initialises the output conv, so a fresh
    one predicts zero noise for every label and sampling could not show that the label matters."""
    torch.manual_seed(0)
    G = build_generator(GANConfig("ddpm", size, channels, num_classes, width=8, extra={**TINY, **extra}))
    assert isinstance(G, DiffusionGenerator)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return G.eval()


def labels() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_multi_hot_embedding_is_a_sum_and_null_is_its_own_vector() -> None:
    torch.manual_seed(0)
    emb = MultiHotEmbedding(K, 6)
    e = emb(torch.eye(K))
    assert torch.allclose(emb(torch.tensor([[1.0, 1.0, 0.0]])), e[0:1] + e[1:2], atol=1e-6)
    none, null = emb(torch.zeros(1, K)), emb(torch.full((1, K), NULL_FILL))
    assert torch.equal(none, torch.zeros(1, 6))  # no positive label: no class vector added
    assert null.abs().sum() > 0  # the dropped label has a learned vector of its own
    assert torch.equal(emb(torch.tensor([[float("nan"), 1.0, 0.0]])), e[1:2])  # unknown reads as absent


@pytest.mark.parametrize(("size", "channels"), [(16, 1), (28, 1), (16, 3)])
def test_sampling_is_a_deterministic_function_of_z_and_y(size: int, channels: int) -> None:
    G = tiny(size, channels)
    assert G.z_dim == channels * size * size
    z = torch.randn(4, G.z_dim)
    a = G(z, labels())
    assert a.shape == (4, channels, size, size) and a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    torch.manual_seed(123)  # the global RNG does not matter: DDIM with eta 0
    assert torch.equal(a, G(z, labels()))
    assert not torch.equal(a, G(torch.randn(4, G.z_dim), labels()))
    other = labels().flip(0)
    assert not torch.allclose(a, G(z, other))  # the label changes the image


def test_sampling_options_change_the_output_and_are_checked() -> None:
    G = tiny()
    z = torch.randn(2, G.z_dim)
    a = G(z, labels()[:2])
    assert G.sampling(2, 1.0) == {"sampler": "ddim", "ddim_steps": 2, "eta": 0.0, "guidance": 1.0}
    assert not torch.allclose(a, G(z, labels()[:2]))
    with pytest.raises(ConfigError, match="DDIM steps"):
        G.sampling(0)
    with pytest.raises(ConfigError, match="guidance"):
        G.sampling(guidance=-1.0)
    with pytest.raises(ValueError, match="noise shaped like"):
        G(torch.randn(2, 100), labels()[:2])


def test_loss_trains_the_denoiser_under_bf16_autocast() -> None:
    G = tiny().train()
    opt = torch.optim.Adam(G.parameters(), 1e-3)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    before = [p.detach().clone() for p in G.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = G.loss(x0, labels())
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert G.net.unet.class_embedding.proj.weight.grad is not None  # the label reaches the loss
    assert any(not torch.equal(b, p) for b, p in zip(before, G.parameters(), strict=True))


def test_save_load_round_trip(tmp_path) -> None:
    G = tiny()
    save_generator(G, tmp_path)
    G2 = load_generator(tmp_path)
    z = torch.randn(2, G.z_dim)
    assert torch.equal(G(z, labels()[:2]), G2(z, labels()[:2]))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"size": 28, "extra": {"mult": [1, 2, 2, 2], "attention": [False] * 4}}, "divisible"),
        ({"extra": {"mult": [1, 2], "attention": [True]}}, "one entry per UNet level"),
        ({"width": 6}, "norm_groups"),
        ({"extra": {"p_uncond": 1.0}}, "p_uncond"),
        ({"extra": {"ddim_steps": 2000}}, "DDIM steps"),
        ({"num_classes": 0}, "conditional"),
        ({"extra": {"beta": 1}}, "unknown extra"),
    ],
)
def test_bad_config_is_a_config_error(kw: dict, match: str) -> None:
    base = {"name": "ddpm", "size": 16, "num_classes": K, "width": 8, **kw}
    with pytest.raises(ConfigError, match=match):
        build_generator(GANConfig(**base))


def test_build_gan_refuses_a_model_without_discriminator() -> None:
    with pytest.raises(ConfigError, match="without a discriminator"):
        build_gan(GANConfig("ddpm", 16, 1, K, width=8))
