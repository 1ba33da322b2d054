"""The update rules of differentially private training (`--dp-epsilon`): what each model family makes private.

GANs (cgan, acgan): only the discriminator reads real images, so only its update is DP-SGD (train/privacy.py).
Its loss has a real term (and, for acgan, the class loss on real images) and a fake term. Each Poisson-sampled real
image's terms get one clipped gradient; the sum is noised. The fake term is computed on a fixed-size batch of
generated images whose labels are drawn from the training label distribution (published in run.json, see
privacy.py): it reads no real image, so its gradient is a function of the noised weights and public randomness
(post-processing) and is added exactly, without clipping or noise. Fakes are not paired with real images: the
generator's BatchNorm normalises over its batch, so a fake drawn for one real image's label would depend on the
other images' labels and that image's gradient could not be bounded alone. The discriminator has GroupNorm
instead of BatchNorm and no minibatch-stddev channel, for the same reason. The generator never reads a real image:
its step goes through the discriminator's noised weights, so the generator, its EMA and everything generated
are post-processing of private outputs.

Diffusion (ddpm): the denoiser reads the real images; each image's noise-prediction loss (its own timestep,
noise and label dropout) gets one clipped gradient per step.

twostage: Stage I is the GAN rule above on masks; Stage II's painter reads the real masks and images too, so
the painter and its discriminator are updated together from each pair's clipped gradient (train/twostage.py
`PrivatePaintObjective`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medsyn.models import GANConfig
from medsyn.train import losses
from medsyn.train.config import TrainConfig
from medsyn.train.diffusion import DiffusionObjective
from medsyn.train.distributed import DistInfo
from medsyn.train.gan import GANObjective
from medsyn.train.objective import optimise
from medsyn.train.privacy import DPAccount, PrivateGradients
from medsyn.train.runtime import Runtime


def real_d_term(kind: str, real_logits: torch.Tensor) -> torch.Tensor:
    """The real-image half of `losses.d_loss`, per image (its batch mean is the non-private term)."""
    if kind == "ns":
        return F.softplus(-real_logits)
    if kind == "hinge":
        return F.relu(1.0 - real_logits)
    raise ValueError(f"loss {kind!r} has no per-sample form here")


def fake_d_term(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generated-image half of `losses.d_loss` (a batch mean)."""
    if kind == "ns":
        return F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"loss {kind!r} has no per-sample form here")


def per_sample_class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`losses.class_loss` per image: the mean BCE over that image's known (non-NaN) labels."""
    known = ~torch.isnan(labels)
    per_label = F.binary_cross_entropy_with_logits(
        class_logits.float(), torch.nan_to_num(labels, nan=0.0), reduction="none"
    )
    return (per_label * known).sum(dim=1) / known.sum(dim=1).clamp(min=1)


class PublicGuard:
    """The divergence guard's evidence in a private run: only what DP already releases. The loss terms on real
    images (d_loss, cls_loss, a denoiser's loss) are computed without noise, so rolling back (or aborting) on them
    would let one image's gradient decide the run's course unclipped. What decides instead: whether the private
    network's weights are finite after its noised step, the generator's weights (post-processing) and the losses
    that read no real image (a GAN's generated batch, the generator's loss)."""

    def __init__(self, device: torch.device) -> None:
        self.bad = torch.zeros((), device=device)  # steps since the last check with a non-finite public quantity

    def record(self, modules: list[torch.nn.Module], public: list[torch.Tensor]) -> None:
        flags = [torch.isfinite(p).all() for m in modules for p in m.parameters()]
        flags += [torch.isfinite(t).all() for t in public]
        self.bad += (~torch.stack(flags).all()).float()  # no host sync: read at the loop's log steps

    def take(self) -> bool:
        """Whether a non-finite public quantity was seen since the last call (resets the count)."""
        seen = bool(self.bad.item() > 0)
        self.bad.zero_()
        return seen


class PrivateGANObjective(GANObjective):
    """A DCGAN-family GAN whose discriminator is trained with DP-SGD (the generator by post-processing)."""

    columns = ["aug_p", "epsilon"]
    units: torch.Tensor | None = None  # patient-level DP: this step's images' patient numbers (set by the loop)

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                 label_pool: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(cfg, model, rt, info)
        self.account = account
        self.private_d = PrivateGradients(self.D, account, f"{cfg.model}'s discriminator")
        self.guard = PublicGuard(rt.device)
        # the generator's labels: rows of the training label table (NaN = masked -> 0), drawn uniformly
        self.label_pool = None if label_pool is None else torch.nan_to_num(label_pool, nan=0.0).to(rt.device)

    def train_step(self, real: torch.Tensor, y_raw: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One DP-SGD discriminator update on the Poisson batch, then one generator update."""
        cfg, dev, b = self.cfg, self.rt.device, real.shape[0]
        terms: dict[str, torch.Tensor] = {}
        y_fake = None
        if self.label_pool is not None:
            y_fake = self.label_pool[torch.randint(len(self.label_pool), (cfg.batch,), device=dev)]
        z = torch.randn(cfg.batch, cfg.z_dim, device=dev)
        self.D.requires_grad_(True)
        self.private_d.enable(False)  # the generated batch: no per-sample gradients, no noise
        with self.rt.autocast():
            fake = self.G(z, y_fake)
            fake_logits, fake_cls = self.D(self._augment(fake.detach()), y_fake)
        public = fake_d_term(cfg.loss, fake_logits.float())
        fake_cls_loss = losses.class_loss(fake_cls, y_fake) if fake_cls is not None and y_fake is not None else None
        if fake_cls_loss is not None:
            public = public + fake_cls_loss
        per_image = None
        if b:  # the real images: one clipped gradient each
            self.private_d.enable(True)
            y = torch.nan_to_num(y_raw, nan=0.0) if y_raw is not None else None
            with self.rt.autocast():
                real_logits, real_cls = self.D(self._augment(real), y)
            per_image = real_d_term(cfg.loss, real_logits.float())
            terms["d_loss"] = (per_image.mean() + fake_d_term(cfg.loss, fake_logits.float())).detach()
            if real_cls is not None and y_raw is not None and fake_cls_loss is not None:
                real_cls_loss = per_sample_class_loss(real_cls, y_raw)
                per_image = per_image + real_cls_loss
                terms["cls_loss"] = (real_cls_loss.mean() + fake_cls_loss).detach()
        self.private_d.step(per_image, self.opt_d, public_loss=public, units=self.units)

        self.D.requires_grad_(False)  # G's step needs no discriminator weight gradients
        with self.rt.autocast():
            logits, cls_logits = self.D(self._augment(fake), y_fake)
        loss_g = losses.g_loss(cfg.loss, logits.float())
        terms["g_loss"] = loss_g.detach()
        if cls_logits is not None and y_fake is not None:
            loss_g = loss_g + losses.class_loss(cls_logits, y_fake)
        optimise(self.opt_g, self.scaler_g, loss_g, self.G, self.info)
        self.guard.record([self.D, self.G], [public.detach(), loss_g.detach()])
        return terms

    def log_values(self) -> dict[str, float]:
        return {**super().log_values(), "epsilon": self.account.epsilon()}


class PrivateRule:
    """What a private objective whose every network reads real images has beside its family's rule: the account,
    one DP-SGD mechanism (`private`), the public divergence guard and the epsilon column."""

    columns = ["epsilon"]
    units: torch.Tensor | None = None  # patient-level DP: this step's images' patient numbers (set by the loop)

    def make_private(self, account: DPAccount, module: torch.nn.Module, what: str, device: torch.device,
                     parts: list[torch.nn.Module] | None = None) -> None:  # fmt: skip
        self.account = account
        self.private = PrivateGradients(module, account, what, parts)
        self.guard = PublicGuard(device)

    def log_values(self) -> dict[str, float]:
        return {"epsilon": self.account.epsilon()}


class PrivateDiffusionObjective(PrivateRule, DiffusionObjective):
    """A denoiser trained with DP-SGD: one clipped gradient per training image and step."""

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                 label_pool: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(cfg, model, rt, info)
        self.make_private(account, self.G.net, f"{cfg.model}'s denoiser", rt.device)

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        per_image = None
        terms: dict[str, torch.Tensor] = {}
        self.private.enable(True)
        if real.shape[0]:
            with self.rt.autocast():
                per_image = self.G.loss(real, y, per_sample=True)
            terms["loss"] = per_image.mean().detach()
        self.private.step(per_image, self.opt, units=self.units)
        self.guard.record([self.G.net], [])
        return terms


def private_objective(cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, family: str,
                      account: DPAccount, label_pool: torch.Tensor | None) -> Any:  # fmt: skip
    """The DP update rule of a model family (`TrainConfig.validate` has refused the models it cannot train)."""
    rule = PrivateGANObjective if family == "gan" else PrivateDiffusionObjective
    return rule(cfg, model, rt, info, account, label_pool)
