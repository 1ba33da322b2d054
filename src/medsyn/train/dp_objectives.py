"""The update rules of differentially private training (`--dp-epsilon`): what each model family makes private.

GANs (cgan, acgan): only the discriminator reads real images, so only its update is DP-SGD (train/privacy.py).
Each Poisson-sampled real image i is paired with one fake image G(z_i, y_i) drawn for it, and the gradient of the
pair's loss terms (real term + fake term, + the AC-GAN class terms) is clipped as one: each training image
contributes exactly one clipped gradient, the fake half being data-independent randomness. The discriminator has
GroupNorm instead of BatchNorm and no minibatch-stddev channel (both mix a batch's images, so one image's
gradient would depend on the others). The generator never reads a real image: its step uses the discriminator's
noised weights, fresh z and labels drawn from the training label distribution (published as is in run.json,
see privacy.py), so the generator, its EMA and everything generated are post-processing of private outputs.

Diffusion (ddpm): the denoiser reads the real images; each image's noise-prediction loss (its own timestep,
noise and label dropout) gets one clipped gradient per step.
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


def per_sample_d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """`losses.d_loss` per pair (real i, fake i): its batch mean is the loss the non-private step minimises."""
    if kind == "ns":
        return F.softplus(-real_logits) + F.softplus(fake_logits)
    if kind == "hinge":
        return F.relu(1.0 - real_logits) + F.relu(1.0 + fake_logits)
    raise ValueError(f"loss {kind!r} has no per-sample form here")


def per_sample_class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`losses.class_loss` per image: the mean BCE over that image's known (non-NaN) labels."""
    known = ~torch.isnan(labels)
    per_label = F.binary_cross_entropy_with_logits(
        class_logits.float(), torch.nan_to_num(labels, nan=0.0), reduction="none"
    )
    return (per_label * known).sum(dim=1) / known.sum(dim=1).clamp(min=1)


class PrivateGANObjective(GANObjective):
    """A DCGAN-family GAN whose discriminator is trained with DP-SGD (the generator by post-processing)."""

    columns = ["aug_p", "epsilon"]

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                 label_pool: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(cfg, model, rt, info)
        self.account = account
        self.private_d = PrivateGradients(self.D, account, f"{cfg.model}'s discriminator")
        # the generator's labels: rows of the training label table (NaN = masked -> 0), drawn uniformly
        self.label_pool = None if label_pool is None else torch.nan_to_num(label_pool, nan=0.0).to(rt.device)

    def train_step(self, real: torch.Tensor, y_raw: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One DP-SGD discriminator update on the Poisson batch, then one generator update."""
        cfg, dev, b = self.cfg, self.rt.device, real.shape[0]
        terms: dict[str, torch.Tensor] = {}
        self.D.requires_grad_(True)
        self.private_d.enable(True)
        per_pair = None
        if b:
            y = torch.nan_to_num(y_raw, nan=0.0) if y_raw is not None else None
            z = torch.randn(b, cfg.z_dim, device=dev)
            with self.rt.autocast():
                with torch.no_grad():
                    fake = self.G(z, y)
                pair_y = torch.cat([y, y]) if y is not None else None
                logits, cls = self.D(self._augment(torch.cat([real, fake.to(real.dtype)])), pair_y)
            logits = logits.float()
            per_pair = per_sample_d_loss(cfg.loss, logits[:b], logits[b:])
            terms["d_loss"] = per_pair.mean().detach()
            if cls is not None and y_raw is not None and y is not None:
                cls_pair = per_sample_class_loss(cls[:b], y_raw) + per_sample_class_loss(cls[b:], y)
                per_pair = per_pair + cls_pair
                terms["cls_loss"] = cls_pair.mean().detach()
        self.private_d.step(per_pair, self.opt_d, fold=2)  # D's rows: b real images, then their b fakes

        self.D.requires_grad_(False)
        y_g = None
        if self.label_pool is not None:
            y_g = self.label_pool[torch.randint(len(self.label_pool), (cfg.batch,), device=dev)]
        z = torch.randn(cfg.batch, cfg.z_dim, device=dev)
        with self.rt.autocast():
            logits, cls_logits = self.D(self._augment(self.G(z, y_g)), y_g)
        loss_g = losses.g_loss(cfg.loss, logits.float())
        terms["g_loss"] = loss_g.detach()
        if cls_logits is not None and y_g is not None:
            loss_g = loss_g + losses.class_loss(cls_logits, y_g)
        optimise(self.opt_g, self.scaler_g, loss_g, self.G, self.info)
        return terms

    def log_values(self) -> dict[str, float]:
        return {**super().log_values(), "epsilon": self.account.epsilon()}


class PrivateDiffusionObjective(DiffusionObjective):
    """A denoiser trained with DP-SGD: one clipped gradient per training image and step."""

    columns = ["epsilon"]

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                 label_pool: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(cfg, model, rt, info)
        self.account = account
        self.private = PrivateGradients(self.G.net, account, f"{cfg.model}'s denoiser")

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        per_image = None
        terms: dict[str, torch.Tensor] = {}
        self.private.enable(True)
        if real.shape[0]:
            with self.rt.autocast():
                per_image = self.G.loss(real, y, per_sample=True)
            terms["loss"] = per_image.mean().detach()
        self.private.step(per_image, self.opt)
        return terms

    def log_values(self) -> dict[str, float]:
        return {"epsilon": self.account.epsilon()}


def private_objective(cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, family: str,
                      account: DPAccount, label_pool: torch.Tensor | None) -> Any:  # fmt: skip
    """The DP update rule of a model family (`TrainConfig.validate` has refused the models it cannot train)."""
    rule = PrivateGANObjective if family == "gan" else PrivateDiffusionObjective
    return rule(cfg, model, rt, info, account, label_pool)
