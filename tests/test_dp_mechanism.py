"""Differentially private training, the mechanism itself: per-sample gradients each image's own, clipping
(also of non-finite gradients), Opacus' DPOptimizer, one image's bounded influence end to end, Poisson batches,
and the printed epsilon."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from train_helpers import tiny

from medsyn.data.cache import prepare
from medsyn.models import MODELS, GANConfig, build_gan
from medsyn.models.registry import build_generator
from medsyn.report.html import dp_text
from medsyn.report.markup import round_up
from medsyn.train import dp_objectives, losses
from medsyn.train.data import PoissonBatches
from medsyn.train.distributed import DistInfo
from medsyn.train.privacy import DPAccount, PrivateGradients
from medsyn.train.progress import progress_line
from medsyn.train.runtime import Runtime

DDPM_TINY = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=200&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_an_image_with_an_infinite_loss_is_dropped_from_the_sum() -> None:
    """The clipped sum with one image's loss made infinite is finite and equals the sum over the other images:
    its non-finite gradient cannot be bounded by C, so it contributes nothing (0 * inf would make it all NaN)."""
    torch.manual_seed(0)
    _, D = build_gan(GANConfig("cgan", 16, 1, 3, 16, 8, {"d_norm": "group", "mbstd": 0}))
    x, y = torch.randn(5, 1, 16, 16), (torch.rand(5, 3) > 0.5).float()
    private = PrivateGradients(D, DPAccount(4.0, 1e-3, 0.05, n_train=50, batch=5, noise_multiplier=0.0), "D")
    sgd = torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: both steps start from the same weights

    def update(images: torch.Tensor, labels: torch.Tensor, poison: float | None) -> torch.Tensor:
        private.enable(True)
        loss = torch.relu(1 - D(images, labels)[0])
        if poison is not None:
            loss = loss * torch.tensor([poison] + [1.0] * (len(loss) - 1))
        private.step(loss, sgd)
        return torch.cat([p.grad.flatten() for p in D.parameters()])

    poisoned = update(x, y, float("inf"))
    assert torch.isfinite(poisoned).all() and int(private.dropped) == 1
    assert poisoned.norm().item() <= 4 * 0.05 / 5 * (1 + 1e-5)  # four clipped images over q N = 5
    torch.testing.assert_close(poisoned, update(x[1:], y[1:], None), rtol=1e-5, atol=1e-9)
    assert torch.isfinite(update(x, y, float("nan"))).all() and int(private.dropped) == 2


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_private_step_is_opacus_dpoptimizer_step() -> None:
    """Per-sample gradients of the GroupNorm discriminator, clipped at C and summed, equal Opacus' DPOptimizer
    with no noise; the noise added to an empty Poisson batch has std sigma C / (q N)."""
    torch.manual_seed(0)
    _, D = build_gan(GANConfig("cgan", 16, 1, 3, 16, 8, {"d_norm": "group", "mbstd": 0}))
    twin = GANConfig("cgan", 16, 1, 3, 16, 8, {"d_norm": "group", "mbstd": 0})
    _, D2 = build_gan(twin)
    D2.load_state_dict(D.state_dict())
    x, y = torch.randn(6, 1, 16, 16), (torch.rand(6, 3) > 0.5).float()
    account = DPAccount(4.0, 1e-3, 0.05, n_train=60, batch=6, noise_multiplier=0.0)
    ours = PrivateGradients(D, account, "D")
    sgd = torch.optim.SGD(D.parameters(), lr=1.0)
    ours.enable(True)  # hooks before the forward, as the objectives do
    ours.step(torch.relu(1 - D(x, y)[0]), sgd)
    for m in D2.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    GradSampleModule(D2, loss_reduction="sum")
    theirs = DPOptimizer(torch.optim.SGD(D2.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=0.05,
                         expected_batch_size=6, loss_reduction="sum")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that the images need no gradient
        torch.relu(1 - D2(x, y)[0]).sum().backward()
    theirs.step()  # "sum": Opacus does not divide by the batch; we do, as its "mean" does
    for p, q in zip(D.parameters(), D2.parameters(), strict=True):
        torch.testing.assert_close(p.grad * 6, q.grad, rtol=1e-5, atol=1e-7)
    assert account.steps == 1
    # a term that reads no real image (a GAN's generated batch) adds its exact gradient, unclipped and unnoised
    params, fake = list(D.parameters()), torch.randn(6, 1, 16, 16)
    ours.enable(False)
    public = torch.relu(1 + D(fake, y)[0]).mean()
    expected = list(torch.autograd.grad(public, params, retain_graph=True))
    for i in range(6):  # each real image's gradient on its own, clipped at C = 0.05, averaged over q N = 6
        g = torch.autograd.grad(torch.relu(1 - D(x[i : i + 1], y[i : i + 1])[0]).sum(), params)
        scale = min(1.0, 0.05 / (torch.cat([t.flatten() for t in g]).norm().item() + 1e-6))
        expected = [e + t * scale / 6 for e, t in zip(expected, g, strict=True)]
    ours.enable(True)
    ours.step(torch.relu(1 - D(x, y)[0]), sgd, public_loss=public)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)
    noisy = DPAccount(4.0, 1e-3, 2.0, n_train=60, batch=6, noise_multiplier=1.5)
    ours.account = noisy
    ours.step(None, sgd)
    grads = torch.cat([p.grad.flatten() for p in D.parameters()])
    assert grads.std().item() == pytest.approx(1.5 * 2.0 / 6, rel=0.05)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("name,unit", [("cgan", "image"), ("acgan", "image"), ("ddpm", "image"), ("cgan", "patient"),
                                       ("ddpm", "patient")])  # fmt: skip
def test_one_replaced_image_moves_the_update_by_at_most_2c_over_b(cache: Path, name: str, unit: str) -> None:
    """End to end through the objective's train_step, noise off (sigma 0) and C = 1e-3: replacing one real image
    and its labels by an extreme one changes the gradient the private optimiser receives by at most 2C / (q N)
    (the public generated-batch term is the same in both: same weights and seeds). Patient-level: replacing both
    images of one patient (of four, two images each) moves it by at most 2C / (q P)."""
    c, b = 1e-3, 8
    units = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]) if unit == "patient" else None
    extra = DDPM_TINY if name == "ddpm" else {}
    cfg = tiny(cache, model=name, batch=b, dp_epsilon=4.0, dp_delta=1e-3, dp_max_grad_norm=c, model_extra=extra)
    cfg = cfg.resolved()
    model = GANConfig(name, 16, 1, 3, cfg.z_dim, cfg.width, cfg.model_extra)
    rt = Runtime(torch.device("cpu"), "fp32", False, 0)
    torch.manual_seed(0)
    x, y = torch.rand(b, 1, 16, 16) * 2 - 1, (torch.rand(b, 3) > 0.5).float()
    pool = (torch.rand(40, 3) > 0.5).float()
    extreme_x, extreme_y = x.clone(), y.clone()
    replaced = [0, 1] if unit == "patient" else [0]
    extreme_x[replaced], extreme_y[replaced] = 1e4 * torch.sign(torch.randn(1, 16, 16)), 1.0 - y[replaced]

    def update(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)  # the same initial weights, generated batch, timesteps and noise
        account = DPAccount(4.0, 1e-3, c, n_train=10 * b, batch=b, noise_multiplier=0.0,
                            n_patients=None if units is None else 5 * b)  # fmt: skip
        obj = dp_objectives.private_objective(cfg, model, rt, DistInfo(), MODELS[name].family, account, pool)
        obj.units = units
        opt, private = (obj.opt, obj.private) if name == "ddpm" else (obj.opt_d, obj.private_d)
        seen: list[torch.Tensor] = []
        grads = lambda: torch.cat([p.grad.flatten() for p in private.module.parameters() if p.requires_grad])  # noqa: E731
        opt.step = lambda *a, **k: seen.append(grads())
        torch.manual_seed(2)
        obj.train_step(images, labels, 0)
        assert len(seen) == 1 and torch.isfinite(seen[0]).all()
        return seen[0]

    moved = (update(x, y) - update(extreme_x, extreme_y)).norm().item()
    expected = b if units is None else 0.1 * 5 * b  # q N images, or q P patients, per step
    assert 0.1 * c / expected < moved <= 2 * c / expected * (1 + 1e-4)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_patient_level_clips_the_sum_of_a_patients_gradients() -> None:
    """With `units`, the update is the sum over patients of (sum of that patient's image gradients, clipped to C),
    over the expected patient count q P; a patient with a non-finite image is dropped whole."""
    torch.manual_seed(0)
    _, D = build_gan(GANConfig("cgan", 16, 1, 3, 16, 8, {"d_norm": "group", "mbstd": 0}))
    x, y, units = torch.randn(5, 1, 16, 16), (torch.rand(5, 3) > 0.5).float(), torch.tensor([3, 3, 7, 9, 9])
    account = DPAccount(4.0, 1e-3, 0.05, n_train=50, batch=5, noise_multiplier=0.0, n_patients=20)
    assert account.expected_batch == pytest.approx(2.0)  # q P = 5 / 50 * 20
    private, params = PrivateGradients(D, account, "D"), list(D.parameters())
    sgd = torch.optim.SGD(params, lr=0.0)
    clipped = []  # each patient's summed gradient, clipped to C, over q P
    for patient in ([0, 1], [2], [3, 4]):
        g = torch.autograd.grad(torch.relu(1 - D(x[patient], y[patient])[0]).sum(), params)
        scale = min(1.0, 0.05 / (torch.cat([t.flatten() for t in g]).norm().item() + 1e-6))
        clipped.append([t * scale / 2.0 for t in g])
    private.enable(True)
    private.step(torch.relu(1 - D(x, y)[0]), sgd, units=units)
    for i, p in enumerate(params):
        torch.testing.assert_close(p.grad, sum(c[i] for c in clipped), rtol=1e-4, atol=1e-8)
    private.enable(True)
    loss = torch.relu(1 - D(x, y)[0]) * torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0])
    private.step(loss, sgd, units=units)  # patient 3's second image is infinite: patient 3 is left out
    assert int(private.dropped) == 1
    for i, p in enumerate(params):
        torch.testing.assert_close(p.grad, clipped[1][i] + clipped[2][i], rtol=1e-4, atol=1e-8)


def test_poisson_batches_of_patients_bring_all_their_images() -> None:
    units = np.repeat(np.arange(100), 3)  # 100 patients, 3 items each
    stream = iter(PoissonBatches(300, 0.1, seed=3, units=units))
    batches = [next(stream) for _ in range(40)]
    for batch in batches:
        drawn = set(units[batch].tolist())
        assert sorted(batch) == [i for i in range(300) if units[i] in drawn]
    assert abs(np.mean([len(set(units[b].tolist())) for b in batches]) - 10) < 2  # q P = 10 patients per step
    same = iter(PoissonBatches(300, 0.1, seed=3, units=np.arange(300)))  # each item its own unit: the image stream
    plain = iter(PoissonBatches(300, 0.1, seed=3))
    assert [next(same) for _ in range(5)] == [next(plain) for _ in range(5)]


def test_spent_epsilon_is_printed_rounded_up() -> None:
    """`:.3g` printed a spent epsilon of 1.2345 as 1.23, below what was spent; it is rounded up instead."""
    assert [round_up(v) for v in (1.2345, 1.2301, 1.23, 3.999, 0.012341, 4.0)] == [
        "1.24", "1.24", "1.23", "4", "0.0124", "4"]  # fmt: skip
    spent = {"epsilon": 3.9901, "delta": 1e-5, "target_epsilon": 4.0, "noise_multiplier": 1.1, "max_grad_norm": 1.0,
             "steps": 10, "sample_rate": 0.01}  # fmt: skip
    assert "ε = 4," in dp_text(spent)
    prog = {"steps": 10, "steps_planned": 10, "images_seen": 80, "train_seconds": 1.0, "stop_reason": "completed"}
    assert "(4, 1e-05)-DP" in progress_line({**prog, "privacy": spent})


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_denoiser_per_sample_gradients_are_each_images_own() -> None:
    """Opacus' per-sample gradients of the ddpm denoiser equal the gradient of each image's loss computed with that
    image alone in the batch (its own timestep, noise and label dropout): no layer mixes the images of a batch,
    so clipping one image's gradient bounds that image's influence."""
    torch.manual_seed(0)
    G = build_generator(GANConfig("ddpm", 16, 1, 3, 16, 8, {**DDPM_TINY, "p_uncond": 0.5})).train()
    x, y = torch.randn(4, 1, 16, 16), (torch.rand(4, 3) > 0.5).float()
    private = PrivateGradients(G.net, DPAccount(4.0, 1e-3, 1.0, n_train=40, batch=4, noise_multiplier=1.0), "net")
    drop, noise, t = G.draw(x, conditional=True)
    assert drop is not None and 0 < int(drop.sum()) < 4  # both kinds of rows: labelled and label-dropped
    private.enable(True)
    G.loss(x, y, per_sample=True, draws=(drop, noise, t)).sum().backward()
    params = [p for p in G.net.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.clone() for p in params]
    private.enable(False)
    for i in range(4):
        one = slice(i, i + 1)
        alone = torch.autograd.grad(G.loss(x[one], y[one], per_sample=True, draws=(drop[one], noise[one], t[one]))[0],
                                    params, allow_unused=True)  # fmt: skip
        for ps, g in zip(per_sample, alone, strict=True):
            torch.testing.assert_close(ps[i], torch.zeros_like(ps[i]) if g is None else g, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_parts_are_clipped_apart_each_to_c_over_root_k() -> None:
    """With two parts, each image's gradient of each part is clipped to C / sqrt 2 (so the whole is <= C) and each
    part's sum goes to its own optimiser."""
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
    both = torch.nn.ModuleList([first, second])
    x = torch.randn(5, 4) * torch.tensor([[0.1], [1.0], [10.0], [0.01], [3.0]])  # small and large gradients
    c, parts = 0.5, [first, second]
    private = PrivateGradients(both, DPAccount(4.0, 1e-3, c, n_train=50, batch=5, noise_multiplier=0.0), "both", parts)
    opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in parts]
    private.enable(True)
    private.step(second(torch.tanh(first(x))).square().flatten(), opts)
    private.enable(False)
    expected = [torch.zeros_like(p) for p in both.parameters()]
    for i in range(5):
        for part in parts:
            params = list(part.parameters())
            g = torch.autograd.grad(second(torch.tanh(first(x[i : i + 1]))).square().sum(), params)
            scale = min(1.0, c / 2**0.5 / (torch.cat([t.flatten() for t in g]).norm().item() + 1e-6))
            for t, p in zip(g, params, strict=True):
                k = [id(q) for q in both.parameters()].index(id(p))
                expected[k] += t * scale / 5
    for p, e in zip(both.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="one of the clipped parts"):
        PrivateGradients(both, private.account, "both", [first])


def _painter_updates(cache: Path, c: float, b: int, pairs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The gradients PrivatePaintObjective hands its two optimisers (painter, discriminator) for `pairs`
    = (images in [-1, 1], uint8 masks, labels), noise off, from the same initial weights every call."""
    from medsyn.train.twostage import PrivatePaintObjective

    cfg = tiny(cache, model="twostage", batch=b, dp_epsilon=4.0, dp_delta=1e-3, dp_max_grad_norm=c).resolved()
    model = GANConfig("twostage", 16, 1, 3, cfg.z_dim, cfg.width, cfg.model_extra)
    rt = Runtime(torch.device("cpu"), "fp32", False, 0)
    torch.manual_seed(1)
    account = DPAccount(4.0, 1e-3, c, n_train=10 * b, batch=b, noise_multiplier=0.0)
    obj = PrivatePaintObjective(cfg, model, rt, DistInfo(), account, None)
    seen: list[torch.Tensor] = []
    for opt, net in ((obj.opt_g, obj.G), (obj.opt_d, obj.D)):
        opt.step = lambda *a, net=net, **k: seen.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    images, masks, labels = pairs
    obj.masks = masks
    obj.train_step(images, labels, 0)
    assert len(seen) == 2 and all(torch.isfinite(s).all() for s in seen)
    if len(images) == 1:  # a pair alone, unclipped: D's gradient is its loss's, the painter's its own (pix2pix's)
        obj.private.enable(False)
        condition = obj.G.condition(masks, labels)
        painted = obj.G(masks, labels)
        d_loss = losses.d_loss("ns", obj.D(condition, images), obj.D(condition, painted.detach()))
        g_loss = losses.g_loss("ns", obj.D(condition, painted)) + 100.0 * (painted - images).abs().mean()
        for loss, net, got in ((g_loss, obj.G, seen[0]), (d_loss, obj.D, seen[1])):
            own = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))]) / b
            torch.testing.assert_close(got, own, rtol=1e-3, atol=1e-4 * own.abs().max().item())
    return seen


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_painter_pairs_are_each_their_own_and_one_replaced_pair_is_bounded(cache: Path) -> None:
    """Stage II's private update. Unclipped (C huge), the update of a batch is the sum of each pair's alone:
    no layer mixes pairs, D's gradient comes from D's loss only and the painter's from its own (through a frozen
    copy of D). Clipped (C = 1e-3), replacing one pair by an extreme one moves the painter's and D's updates
    together by at most 2C / (q N), each by at most 2 (C / sqrt 2) / (q N)."""
    b = 4
    torch.manual_seed(0)
    images = torch.rand(b, 1, 16, 16) * 2 - 1
    masks = (torch.rand(b, 1, 16, 16) > 0.5).to(torch.uint8)
    labels = (torch.rand(b, 3) > 0.5).float()
    whole = _painter_updates(cache, 1e6, b, (images, masks, labels))
    alone = [_painter_updates(cache, 1e6, b, (images[i : i + 1], masks[i : i + 1], labels[i : i + 1]))
             for i in range(b)]  # fmt: skip
    for part in range(2):
        scale = whole[part].abs().max().item()  # biases before an InstanceNorm: float noise around 0, not compared
        torch.testing.assert_close(whole[part], sum(a[part] for a in alone), rtol=1e-3, atol=1e-4 * scale)
    c = 1e-3
    extreme_images, extreme_masks, extreme_labels = images.clone(), masks.clone(), labels.clone()
    extreme_images[0], extreme_masks[0], extreme_labels[0] = 1e4 * torch.sign(torch.randn(1, 16, 16)), 1 - masks[0], 1 - labels[0]
    moved = [(u - v).norm().item() for u, v in zip(_painter_updates(cache, c, b, (images, masks, labels)),
                                                   _painter_updates(cache, c, b, (extreme_images, extreme_masks, extreme_labels)),
                                                   strict=True)]  # fmt: skip
    assert all(0.1 * c / b < m <= 2 * c / 2**0.5 / b * (1 + 1e-4) for m in moved), moved
    assert (moved[0] ** 2 + moved[1] ** 2) ** 0.5 <= 2 * c / b * (1 + 1e-4)
