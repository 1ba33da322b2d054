"""Model zoo: shapes, conditioning, config errors, checkpoints, augmentation, mixed precision."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medsyn.errors import CheckpointError, ConfigError
from medsyn.models import (
    MODELS,
    AdaptiveAugment,
    GANConfig,
    build_gan,
    diff_augment,
    load_generator,
    save_generator,
)
from medsyn.models.registry import has_discriminator

K = 3
# one (G, D) pair each; diffusion models: tests/test_diffusion.py, twostage (a D per stage): tests/test_twostage.py
GANS = [n for n, info in MODELS.items() if info.family == "gan" and has_discriminator(n)]


def _cfg(name: str, size: int = 32, channels: int = 1, **kw) -> GANConfig:
    return GANConfig(name, size=size, channels=channels, num_classes=K, z_dim=16, width=4, **kw)


def _y(b: int) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])[:b]


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("size", [16, 28, 32, 64])
def test_shapes_and_range(name: str, size: int) -> None:
    torch.manual_seed(0)
    cfg = _cfg(name, size, channels=3 if size == 32 else 1)
    G, D = build_gan(cfg)
    assert G.cfg is cfg and G.z_dim == 16
    x = G(torch.randn(4, 16), _y(4))
    assert x.shape == (4, cfg.channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    logits, class_logits = D(x, _y(4))
    assert logits.shape == (4,)
    assert (class_logits is not None) == (name == "acgan")
    if class_logits is not None:
        assert class_logits.shape == (4, K)


def test_largest_size_builds() -> None:
    G, D = build_gan(_cfg("dcgan", 256))
    assert D(G(torch.randn(2, 16)))[0].shape == (2,)


@pytest.mark.parametrize("name", [n for n in GANS if MODELS[n].conditional])
def test_conditional_models_depend_on_y(name: str) -> None:
    torch.manual_seed(0)
    G, D = build_gan(_cfg(name))  # train mode: fresh BN running stats would shrink DCGAN outputs to ~1e-6
    z = torch.randn(1, 16).expand(4, -1)
    with torch.no_grad():
        torch.manual_seed(1)  # same noise inputs (stylegan2) for both calls
        a = G(z, _y(4))
        torch.manual_seed(1)
        b = G(z, _y(4).flip(0))
    assert not torch.allclose(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-4  # same z, different label -> different image
    if name in ("cgan", "stylegan2"):  # projection discriminators see the label
        assert not torch.allclose(D(a, _y(4))[0], D(a, _y(4).flip(0))[0])


def test_nan_labels_are_read_as_absent() -> None:
    G, _ = build_gan(_cfg("cgan"))
    G.eval()
    y = _y(4)
    y_nan = y.clone()
    y_nan[y == 0] = float("nan")
    assert torch.equal(G(torch.zeros(4, 16), y), G(torch.zeros(4, 16), y_nan))


def test_dcgan_ignores_y_and_works_without_classes() -> None:
    G, D = build_gan(GANConfig("dcgan", size=32, num_classes=0, z_dim=16, width=4))
    G.eval()
    z = torch.randn(2, 16)
    assert torch.equal(G(z), G(z, torch.ones(2, 5)))


def test_init_is_deterministic_from_seed() -> None:
    for name in GANS:
        torch.manual_seed(7)
        a = build_gan(_cfg(name))[0].state_dict()
        torch.manual_seed(7)
        b = build_gan(_cfg(name))[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "biggan"}, "unknown model"),
        ({"name": "dcgan", "size": 48}, "size 48"),
        ({"name": "stylegan2", "size": 512}, "size 512"),
        ({"name": "dcgan", "channels": 9}, "channels"),
        ({"name": "cgan", "num_classes": 0}, "conditional"),
        ({"name": "acgan", "num_classes": 0}, "conditional"),
        ({"name": "stylegan2", "num_classes": 0}, "conditional"),
        ({"name": "dcgan", "width": 0}, "width"),
        ({"name": "stylegan2", "num_classes": 2, "extra": {"w_dims": 8}}, "unknown extra"),
        ({"name": "stylegan2", "num_classes": 2, "extra": {"mapping_layers": 0}}, "mapping_layers"),
        ({"name": "cgan", "num_classes": 2, "extra": {"d_norm": "layer"}}, "d_norm"),
    ],
)
def test_bad_config_raises_config_error(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        build_gan(GANConfig(**kw))
    assert "\n" not in str(e.value)


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = _cfg("stylegan2", extra={"w_dim": 32})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert GANConfig.from_dict(d) == cfg
    assert build_gan(d)[0].cfg == cfg  # build_gan also accepts the dict form
    with pytest.raises(ConfigError, match="unknown model config key"):
        GANConfig.from_dict({**d, "sise": 64})


@pytest.mark.parametrize("name", GANS)
def test_save_load_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    G, _ = build_gan(_cfg(name, extra={"w_dim": 16} if name == "stylegan2" else {}))
    G.train()
    G(torch.randn(8, 16), _y(4).repeat(2, 1))  # move BN running stats / w_avg away from their init
    G.eval()
    save_generator(G, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "generator.json").read_text())["config"] == G.cfg.to_dict()
    state = torch.get_rng_state()
    G2 = load_generator(tmp_path / "run")
    assert torch.equal(state, torch.get_rng_state())  # loading leaves the caller's RNG alone
    assert not G2.training
    z = torch.randn(4, 16)
    for path in (tmp_path / "run", tmp_path / "run" / "generator.safetensors"):
        G2 = load_generator(path)
        torch.manual_seed(3)
        a = G(z, _y(4))
        torch.manual_seed(3)
        assert torch.equal(a, G2(z, _y(4)))


def test_load_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing")
    G, _ = build_gan(_cfg("dcgan"))
    save_generator(G, tmp_path)
    file = tmp_path / "generator.safetensors"
    tensors = load_file(file)

    def write_meta(meta: dict) -> None:
        save_file(tensors, str(file), metadata={"medsyn": json.dumps(meta)})

    good = json.loads((tmp_path / "generator.json").read_text())
    write_meta({**good, "format_version": 99})
    with pytest.raises(CheckpointError, match="format version 99"):
        load_generator(tmp_path)
    write_meta({**good, "config": {**good["config"], "width": 8}})
    with pytest.raises(CheckpointError, match="do not match"):
        load_generator(tmp_path)
    write_meta({**good, "config": {**good["config"], "name": "nope"}})
    with pytest.raises(CheckpointError, match="config is invalid"):
        load_generator(tmp_path)
    save_file(tensors, str(file))  # no metadata: not ours
    with pytest.raises(CheckpointError, match="no medsyn metadata"):
        load_generator(tmp_path)
    file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors") as e:
        load_generator(file)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("channels", [1, 3])
def test_diff_augment_shape_and_gradient(channels: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, channels, 16, 16, requires_grad=True)
    out = diff_augment(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, p=0.0), x)
    assert diff_augment(x, "translation", p=0.5).shape == x.shape
    with pytest.raises(ConfigError, match="unknown augmentation"):
        diff_augment(x, "color,flip")


def test_adaptive_augment_controller_and_state() -> None:
    ada = AdaptiveAugment(saturate_kimg=1.0)
    assert ada.apply(torch.ones(2, 1, 8, 8)).equal(torch.ones(2, 1, 8, 8))  # p = 0: identity
    for _ in range(3):
        ada.update(torch.tensor(0.9), n_images=100)  # D overfits -> more augmentation
    assert ada.p == pytest.approx(0.3)
    ada.update(0.1, n_images=100)
    assert ada.p == pytest.approx(0.2)
    for _ in range(5):
        ada.update(-1.0, n_images=100)
    assert ada.p == 0.0
    ada.update(1.0, n_images=10_000)
    assert ada.p == 1.0  # clamped
    ada.p = 0.42
    restored = AdaptiveAugment()
    restored.load_state_dict(ada.state_dict())
    assert restored.state_dict() == ada.state_dict()
    assert restored.apply(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("name", GANS)
def test_one_step_bf16_autocast_channels_last(name: str) -> None:
    """One D and one G step under CPU bf16 autocast with channels_last models: finite losses, weights move."""
    torch.manual_seed(0)
    G, D = build_gan(_cfg(name))
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), 1e-3)
    opt_d = torch.optim.Adam(D.parameters(), 1e-3)
    real = torch.rand(4, 1, 32, 32).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
    y = _y(4)
    before = [p.detach().clone() for p in G.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(4, 16), y)
        assert fake.shape == (4, 1, 32, 32)
        lr, cr = D(diff_augment(real), y)
        lf, _ = D(diff_augment(fake.detach()), y)
        loss_d = torch.nn.functional.softplus(-lr).mean() + torch.nn.functional.softplus(lf).mean()
        if cr is not None:
            loss_d = loss_d + torch.nn.functional.binary_cross_entropy_with_logits(cr.float(), y)
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lg, _ = D(diff_augment(G(torch.randn(4, 16), y)), y)
        loss_g = torch.nn.functional.softplus(-lg).mean()
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))


def test_r1_penalty_is_differentiable() -> None:
    """R1 needs grad of D(x) w.r.t. x with create_graph (double backward through every layer)."""
    _, D = build_gan(_cfg("stylegan2"))
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(D(x, _y(4))[0].sum(), x, create_graph=True)
    grad.square().sum().backward()
    assert all(p.grad is not None for p in D.parameters() if p.dim() > 1)  # biases may not reach dD/dx


def test_truncation_pulls_toward_mean() -> None:
    torch.manual_seed(0)
    G, _ = build_gan(_cfg("stylegan2"))
    G.eval()
    z = torch.randn(4, 16)
    torch.manual_seed(1)
    a = G(z, _y(4), truncation_psi=0.0)
    torch.manual_seed(1)
    b = G(torch.randn(4, 16), _y(4), truncation_psi=0.0)
    assert torch.allclose(a, b, atol=1e-6)  # psi = 0: every z maps to the mean w


@pytest.mark.parametrize("name", GANS)
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    G, D = build_gan(_cfg(name))
    G.eval()
    D.eval()
    z, y = torch.randn(4, 16), _y(4)
    torch.manual_seed(1)
    a = G(z, y)
    Gc, Dc = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    b = Gc(z, y)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(D(a, y)[0], Dc(a.contiguous(memory_format=torch.channels_last), y)[0], atol=1e-4)


@pytest.mark.parametrize("d_norm", ["spectral", "none"])
def test_dcgan_discriminator_norm_options(d_norm: str) -> None:
    _, D = build_gan(_cfg("cgan", extra={"d_norm": d_norm}))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(D(x, _y(4))[0].sum(), x, create_graph=True)  # gradient penalty works
    grad.square().sum().backward()


def test_cutout_and_translation_change_pixels_sensibly() -> None:
    torch.manual_seed(0)
    ones = torch.ones(8, 1, 16, 16)
    kept = diff_augment(ones, "cutout").mean(dim=(1, 2, 3))
    assert (kept >= 0.75).all() and (kept < 1).all()  # an 8x8 square (or its part inside the image) is zeroed
    moved = diff_augment(ones, "translation")
    assert ((moved == 0) | (moved == 1)).all() and moved.mean() > 0.7  # integer shifts, zero fill only


def test_generator_sample_bn_batch_uses_the_batch_statistics_in_eval_mode() -> None:
    """sample_bn='batch': eval mode (sampling) normalises like training does, never touches the running
    averages, and keeps the checkpoint layout of 'running'."""
    torch.manual_seed(0)
    G, _ = build_gan(_cfg("cgan"))  # the default
    G_running, _ = build_gan(_cfg("cgan", extra={"sample_bn": "running"}))
    assert G.state_dict().keys() == G_running.state_dict().keys()
    G_running.load_state_dict(G.state_dict())
    z, y = torch.randn(4, 16), _y(4)
    with torch.no_grad():
        G.train()
        trained = G(z, y)
        G.eval()
        before = {k: v.clone() for k, v in G.state_dict().items()}
        sampled = G(z, y)
        assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
        G_running.eval()
        running = G_running(z, y)
    assert torch.allclose(sampled, trained, atol=1e-6)
    assert not torch.allclose(running, sampled, atol=1e-3)  # running averages after one step: not the batch's


@pytest.mark.parametrize("name", ["cgan", "acgan"])
def test_dcgan_minibatch_stddev_sees_the_other_images(name: str) -> None:
    torch.manual_seed(0)
    _, D = build_gan(_cfg(name, extra={"d_norm": "none", "mbstd": 2}))
    _, D0 = build_gan(_cfg(name, extra={"d_norm": "none", "mbstd": 0}))
    assert D.head.in_channels == D0.head.in_channels + 1
    x, y = torch.rand(4, 1, 32, 32), _y(4)
    logits, cls = D(x, y)
    assert logits.shape == (4,) and (cls is None) == (name == "cgan")
    x2 = x.clone()
    x2[1] = 0.0  # groups of 2 are interleaved: images (0, 2) and (1, 3)
    changed = D(x2, y)[0] != logits  # exact: the logits of images outside the group are bit-identical
    assert changed.tolist() == [False, True, False, True]  # image 1 and its group partner 3 move
    assert (D0(x2, y)[0] != D0(x, y)[0]).sum() == 1


@pytest.mark.parametrize(
    "extra,match",
    [({"sample_bn": "ema"}, "sample_bn"), ({"mbstd": -1}, "mbstd"), ({"mbstd": True}, "mbstd")],
)
def test_dcgan_new_options_are_checked(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_gan(_cfg("cgan", extra=extra))
