"""Differentially private training (DP-SGD, Abadi et al. 2016) with Opacus: the accountant and the mechanism.

What is private: the networks that read real images, a GAN's discriminator or a diffusion model's denoiser
(train/dp_objectives.py says how each step uses it), or for twostage the mask GAN's discriminator in Stage I and
both the painter and its discriminator in Stage II, which both read the real pairs (train/twostage.py). Every step
  1. draws a Poisson sample of the training images: each image independently with probability q = batch / N
     (train/data.py `PoissonBatches`; the batch size varies), the sampling the analysis below assumes;
  2. computes one gradient per image (Opacus' `GradSampleModule` hooks), clips each to norm C,
  3. sums them, adds Gaussian noise N(0, (sigma C)^2) to every coordinate and divides by the expected batch q N,
     as Opacus' `DPOptimizer` does, before the optimiser's step.
The privacy loss of the whole run is the composition of these sampled Gaussian mechanisms, counted by Opacus'
RDP accountant (its PRV accountant is tighter but takes ~1 s per evaluation, and the budget is evaluated at every
log row and checkpoint); sigma is chosen (Opacus' `get_noise_multiplier`) so that the planned steps spend at
most the target epsilon at delta. Everything computed from the private network's weights afterwards (the
generator, its EMA, samples, exported weights, synthetic sets) is post-processing and keeps the guarantee.

The Gaussian noise and the Poisson draws come from a generator seeded by a 128-bit secret drawn from the OS at the
run's start (`secrets`), kept only in the checkpoint: the run's published seed (config.yaml, the synthetic
manifest) does not reveal them, and a resumed run continues the same stream exactly. It is a seeded PRNG, not a
cryptographic one (Opacus' secure_mode): keep the checkpoints as confidential as the data.

Not covered: anything else computed from the real data: the loss values in losses.csv and the label statistics
(class names and counts, run.json `labels`) which generation uses, and which are published as they are. The
unit of privacy is one training image (one row), or with `--dp-unit patient` one patient: whole patients are
Poisson-sampled and the sum of each patient's per-image gradients is clipped to C (`PrivateGradients.step` units).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models import MODELS, GANConfig, build_gan
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.registry import build_generator
from medsyn.models.twostage import MaskPainter, PairDiscriminator, mask_config, twostage_options
from medsyn.train.config import TrainConfig

CLIP_EPS = 1e-6  # Opacus' guard in the clipping factor C / (norm + eps)
ACCOUNTANT = "rdp"  # Opacus' RDPAccountant (Mironov 2017; the sampled Gaussian mechanism of Mironov et al. 2019)
DELTA_PER_IMAGE = 0.1  # default delta = 0.1 / N (N = training images)


class DPAccount:
    """The privacy budget of one generator's training: sigma, q, C, and the accountant's history of steps.

    Stored in the checkpoint as plain numbers (`state_dict`), so a resumed run continues the same count and
    `--resume` with more steps stops where the budget runs out instead of overspending it."""

    def __init__(self, target_epsilon: float, delta: float, max_grad_norm: float, n_train: int, batch: int,
                 noise_multiplier: float, n_patients: int | None = None) -> None:  # fmt: skip
        """`n_patients`: patient-level DP over that many patients (each drawn with q = batch / n_train, so the
        expected image batch is still `batch`); None: image-level."""
        self.target_epsilon, self.delta, self.max_grad_norm = float(target_epsilon), float(delta), float(max_grad_norm)
        self.n_train, self.sample_rate, self.noise_multiplier = int(n_train), batch / n_train, float(noise_multiplier)
        self.n_patients = None if n_patients is None else int(n_patients)
        self.expected_batch: float = int(batch)  # expected units per step, q N = batch (images) or q P (patients)
        if self.n_patients is not None:
            self.expected_batch = self.sample_rate * self.n_patients
        self.accountant = create_accountant(mechanism=ACCOUNTANT)
        self.delta_default = False
        self.secret = new_secret()  # seeds the noise and the Poisson draws; never published

    def noise_seed(self) -> int:
        """64-bit seed of the next noisy step's Gaussian noise: fresh for every step, also after a rollback,
        since the accountant's step count never goes back."""
        return _seed64(self.secret, NOISE_STREAM, self.steps)

    def sampling_seed(self) -> int:
        """Seed of the Poisson draws; `PoissonBatches` adds the step (started at `steps`) to it."""
        return _seed64(self.secret, SAMPLING_STREAM)

    @classmethod
    def for_run(cls, cfg: TrainConfig, n_train: int, n_patients: int | None = None) -> DPAccount:
        """Calibrate sigma so that `cfg.steps` Poisson-sampled steps over `n_train` images (or, with `n_patients`,
        over patients) spend the target epsilon."""
        assert cfg.dp_epsilon is not None
        if cfg.batch > n_train:
            raise ConfigError(f"--dp-epsilon samples each image with probability batch / N: --batch {cfg.batch} "
                              f"is larger than the {n_train} training images")  # fmt: skip
        units = n_train if n_patients is None else n_patients
        delta = cfg.dp_delta if cfg.dp_delta is not None else DELTA_PER_IMAGE / units
        q = cfg.batch / n_train
        try:
            with _quiet():
                sigma = get_noise_multiplier(target_epsilon=cfg.dp_epsilon, target_delta=delta, sample_rate=q,
                                             steps=cfg.steps, accountant=ACCOUNTANT)  # fmt: skip
        except ValueError as exc:  # Opacus: "The privacy budget is too low."
            raise ConfigError(
                f"--dp-epsilon {cfg.dp_epsilon} at delta {delta:.3g} over {cfg.steps} steps needs more "
                f"noise than Opacus calibrates ({exc}); raise epsilon or train fewer steps"
            ) from None
        account = cls(cfg.dp_epsilon, delta, cfg.dp_max_grad_norm or 1.0, n_train, cfg.batch, sigma, n_patients)
        account.delta_default = cfg.dp_delta is None
        return account

    # ------------------------------------------------------------------ counting
    @property
    def steps(self) -> int:
        """Noisy steps taken (rolled-back steps included: their privacy was spent)."""
        return sum(int(n) for _, _, n in self.accountant.history)

    def step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self, more_steps: int = 0) -> float:
        """Epsilon spent at delta so far (or after `more_steps` further steps), by the accountant's own formula."""
        history = list(self.accountant.history)
        if more_steps > 0:
            history.append((self.noise_multiplier, self.sample_rate, more_steps))
        if not history:
            return 0.0
        fresh = create_accountant(mechanism=ACCOUNTANT)
        fresh.history = history
        with _quiet():
            return float(fresh.get_epsilon(delta=self.delta))

    def steps_left(self, wanted: int) -> int:
        """The most further steps, up to `wanted`, that keep the epsilon spent within the target (bisection)."""
        if wanted <= 0 or self.epsilon(wanted) <= self.target_epsilon:
            return max(wanted, 0)
        low, high = 0, wanted  # epsilon(low) within the target, epsilon(high) beyond it
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.epsilon(mid) <= self.target_epsilon else (low, mid)
        return low

    # ------------------------------------------------------------------ records
    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists only (checkpoints load with weights_only=True)."""
        return {
            **self.summary(),
            "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history],
            "secret": f"{self.secret:032x}",
            "budget_exhausted": self.steps_left(1) == 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise_multiplier, self.sample_rate = float(state["noise_multiplier"]), float(state["sample_rate"])
        self.delta, self.delta_default = float(state["delta"]), bool(state.get("delta_default", False))
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.n_train = int(state["train_images"])
        self.n_patients = int(state["train_patients"]) if "train_patients" in state else None
        if self.n_patients is not None:
            self.expected_batch = self.sample_rate * self.n_patients
        self.secret = int(state["secret"], 16)

    def summary(self) -> dict[str, Any]:
        """What run.json, the synthetic manifest, generator.json and the report record."""
        return {
            "mechanism": "DP-SGD (Opacus): Poisson sampling, per-sample clipping, Gaussian noise",
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "delta_default": self.delta_default,
            "target_epsilon": self.target_epsilon,
            "max_grad_norm": self.max_grad_norm,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "train_images": self.n_train,
            "steps": self.steps,
            "accountant": ACCOUNTANT,
            "unit": "one training image" if self.n_patients is None else "one patient (all of their images)",
            **({"train_patients": self.n_patients} if self.n_patients is not None else {}),
        }


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence two expected warnings: RDP's "optimal order is the largest alpha" (the bound is valid, only
    not as tight as a wider alpha range could make it) and torch's full-backward-hook note for the images,
    which need no gradient."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def _seed64(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0])


def new_secret() -> int:
    """128 bits from the OS (tests replace this to compare two runs)."""
    return secrets.randbits(128)


# ---------------------------------------------------------------------- the mechanism
NOISE_STREAM, SAMPLING_STREAM = 1, 2


def check_dp_compatible(module: nn.Module, what: str, hint: str = "") -> None:
    """One-line ConfigError when `module`'s layers cannot give per-sample gradients (Opacus' validators:
    BatchNorm and other layers that mix a batch's samples, trainable layers with buffers such as spectral norm)."""
    errors = [" ".join(str(e).split()) for e in ModuleValidator.validate(module, strict=False)]
    errors += [" ".join(str(e).split()) for e in GradSampleModule.validate(module, strict=False)]
    if errors:
        first = errors[0].split(". ")[0].split("(")[0].strip()[:160]
        more = f" (and {len(errors) - 1} more finding(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{what} is not DP-compatible: Opacus says '{first}'{more}{hint}")


def check_private_model(model: GANConfig) -> None:
    """Build the network DP training would make private (a GAN's discriminator, a denoiser) and check it."""
    if model.name == "twostage":  # its mask discriminator, painter and pair discriminator
        hint = "; use model_extra d_norm: group (the default with --dp-epsilon)"
        opts = twostage_options(model)
        check_dp_compatible(build_gan(mask_config(model))[1], "twostage's mask discriminator", hint)
        painter = MaskPainter(model, opts)
        check_dp_compatible(painter, "twostage's painter")
        check_dp_compatible(PairDiscriminator(model, opts, painter.condition_channels), "twostage's pair discriminator",
                            hint)  # fmt: skip
    elif MODELS[model.name].family == "gan":
        hint = "; use model_extra d_norm: group (the default with --dp-epsilon) or none"
        check_dp_compatible(build_gan(model)[1], f"{model.name}'s discriminator", hint)
    else:
        denoiser = build_generator(model)
        assert isinstance(denoiser, DiffusionGenerator)
        check_dp_compatible(denoiser.net, f"{model.name}'s denoiser")


class PrivateGradients:
    """Per-sample clipping and Gaussian noise for one network; Opacus' `GradSampleModule` computes the
    per-sample gradients. Hooks are attached on the first step, after the trainer has copied its EMA
    network, so no copy carries them.

    `parts`: submodules of `module` that are clipped apart (twostage's painter and its discriminator, updated
    together from each pair): each image's gradient of each part is clipped to C / sqrt(k) for k parts, so the
    whole image's gradient still has norm <= C and one Gaussian mechanism of sensitivity C covers both. Apart,
    because one joint clip would let the larger gradient (the painter's L1 term) shrink the other to nothing."""

    def __init__(self, module: nn.Module, account: DPAccount, what: str, parts: list[nn.Module] | None = None) -> None:
        check_dp_compatible(module, what)
        self.module, self.account, self.what = module, account, what
        params = [p for p in module.parameters() if p.requires_grad]
        owner = {id(p): i for i, part in enumerate(parts or [module]) for p in part.parameters()}
        if any(id(p) not in owner for p in params):
            raise ValueError(f"{what}: every trainable parameter must belong to one of the clipped parts")
        self.part_of = [owner[id(p)] for p in params]  # each trainable parameter's part, in parameters() order
        self.part_params = [[i for i, k in enumerate(self.part_of) if k == part] for part in range(len(parts or [module]))]
        self._hooked: GradSampleModule | None = None
        self.dropped = torch.zeros((), dtype=torch.long)  # images dropped for a non-finite gradient (kept private)

    def _hooks(self) -> GradSampleModule:
        if self._hooked is None:
            for m in self.module.modules():  # in-place activations clash with Opacus' full backward hooks
                if getattr(m, "inplace", False) is True:
                    m.inplace = False
            self._hooked = GradSampleModule(self.module, batch_first=True, loss_reduction="sum", strict=True)
        return self._hooked

    def enable(self, on: bool) -> None:
        """Hooks on for the private network's own update, off when it only passes gradients on (G's step)."""
        hooked = self._hooks()
        hooked.enable_hooks() if on else hooked.disable_hooks()

    def step(self, per_sample_loss: torch.Tensor | None, opt: torch.optim.Optimizer | list[torch.optim.Optimizer],
             public_loss: torch.Tensor | None = None, units: torch.Tensor | None = None) -> None:  # fmt: skip
        """One DP-SGD update of the module from its per-image losses (None: an empty Poisson batch), whose
        forward ran after `enable(True)` (the hooks record the layers' inputs during the forward); `opt`: the
        optimiser of its parameters, or one per part.

        `public_loss`: a term that reads no real image (a GAN's generated batch, computed with the hooks off):
        its exact gradient is added to the noised one, as post-processing of the private weights.
        `units` (patient-level DP): each image's patient number; a patient's per-image gradients are summed and
        the sum is clipped to C, so one patient, whatever their image count, moves the sum by at most C."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.enable(False)
        public = [None] * len(params)
        if public_loss is not None:
            with _quiet():
                public = list(torch.autograd.grad(public_loss, params, allow_unused=True))
        self.enable(True)
        opts = opt if isinstance(opt, list) else [opt]
        for o in opts:
            o.zero_grad(set_to_none=True)
        c, sigma = self.account.max_grad_norm, self.account.noise_multiplier
        expected = self.account.expected_batch
        if per_sample_loss is not None:
            self.dropped = self.dropped.to(per_sample_loss.device)
            with _quiet():
                per_sample_loss.sum().backward()
            found = [_per_sample(p) for p in params]
            if all(g is None for g in found):
                raise RuntimeError(f"{self.what}: no per-sample gradients; call enable(True) before the forward")
            n = next(g for g in found if g is not None).shape[0]
            grads = [g if g is not None else p.new_zeros((n, *p.shape), dtype=torch.float32)  # an unused layer
                     for p, g in zip(params, found, strict=True)]  # fmt: skip
            if units is not None:  # one gradient per patient: the sum of their images' (non-finite stays so)
                inverse = torch.unique(units.to(grads[0].device), return_inverse=True)[1]
                m = int(inverse.max()) + 1
                grads = [g.new_zeros((m, *g.shape[1:])).index_add_(0, inverse, g) for g in grads]
            layer_norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1)  # (units, params)
            norms = torch.stack([layer_norms[:, idx].norm(dim=1) for idx in self.part_params], dim=1)
            # an image whose gradient is not finite (an inf/NaN loss, an overflow) has no norm to clip to C:
            # it is dropped (factor 0, its entries zeroed so that 0 * inf cannot make the sum NaN). Dropping
            # changes the sum by that image's contribution, at most C, like any other image.
            finite = torch.isfinite(norms).all(dim=1, keepdim=True)
            bound = c / len(self.part_params) ** 0.5
            factors = torch.where(finite, (bound / (norms + CLIP_EPS)).clamp(max=1.0), torch.zeros_like(norms))
            sums = [torch.einsum("i,i...->...", factors[:, k], torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
                    for g, k in zip(grads, self.part_of, strict=True)]  # fmt: skip
            self.dropped += (~finite).sum()  # on the device, never published (it depends on the real images)
        else:  # an empty Poisson batch: the update is noise alone
            sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        gen = torch.Generator(device=params[0].device).manual_seed(self.account.noise_seed())
        for p, s, pub in zip(params, sums, public, strict=True):
            noise = torch.normal(0.0, sigma * c, size=p.shape, device=p.device, generator=gen)
            grad = (s + noise) / expected
            p.grad = (grad if pub is None else grad + pub.float()).to(p.dtype)
            p.grad_sample = None
        for o in opts:
            o.step()
        self.account.step()
        self.enable(False)


def _per_sample(p: nn.Parameter) -> torch.Tensor | None:
    """p's per-sample gradients (float32: clipping norms are computed in full precision)."""
    gs = getattr(p, "grad_sample", None)
    if gs is None:
        return None
    return (torch.stack(gs).sum(0) if isinstance(gs, list) else gs).float()
