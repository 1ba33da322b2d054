"""The GAN update rule for the shared loop: one discriminator and one generator step per batch.

Losses (ns | hinge | wgan-gp), lazy R1, the AC-GAN class loss and DiffAugment/ADA live here; the loop
(loop.py) adds the EMA, checkpoints, resume and the divergence guard around it.
"""

from __future__ import annotations

from typing import Any

import torch

from medsyn.models import AdaptiveAugment, GANConfig, build_gan, diff_augment
from medsyn.train import losses
from medsyn.train.config import TrainConfig
from medsyn.train.distributed import DistInfo, all_reduce_sum, average_buffers
from medsyn.train.objective import optimise, to_device
from medsyn.train.runtime import Runtime

ADA_INTERVAL = 4  # steps between ADA p updates (StyleGAN2-ADA)


class GANObjective:
    """Generator + discriminator, their optimisers and scalers, and the augmentation state."""

    columns = ["aug_p"]

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo) -> None:
        self.cfg, self.rt, self.info = cfg, rt, info
        G, D = self.build(model)  # G first: its weights depend only on the seed, as before D existed
        self.G, self.D = to_device(G, rt, info), to_device(D, rt, info)
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas, fused=True)
        fp16 = rt.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(rt.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(rt.device.type, enabled=fp16)
        self.ada = AdaptiveAugment(cfg.ada_target, policy=cfg.augment_policy) if cfg.augment == "ada" else None
        self.ada_acc = torch.zeros(2, device=rt.device)  # sum of sign(D(real)), count
        has_cls = cfg.model == "acgan"
        self.keys = (
            ["d_loss", "g_loss"]
            + ["cls_loss"] * has_cls
            + ["r1"] * (cfg.r1_gamma > 0)
            + ["gp"] * (cfg.loss == "wgan-gp")
        )

    @staticmethod
    def build(model: GANConfig) -> tuple[Any, Any]:
        """The (generator, discriminator) pair this objective trains (twostage's painting stage builds its own)."""
        return build_gan(model)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.ada is not None:
            return self.ada.apply(x)
        if self.cfg.augment == "diffaugment":
            return diff_augment(x, self.cfg.augment_policy)
        return x

    def train_step(self, real: torch.Tensor, y_raw: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One discriminator and one generator update; returns the detached loss terms."""
        cfg, dev = self.cfg, self.rt.device
        y = torch.nan_to_num(y_raw, nan=0.0) if y_raw is not None else None  # fake labels: this batch's labels
        z = torch.randn(real.shape[0], cfg.z_dim, device=dev)
        r1_now = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
        terms: dict[str, torch.Tensor] = {}

        self.D.requires_grad_(True)
        real.requires_grad_(r1_now)
        with self.rt.autocast():
            fake = self.G(z, y)
            real_logits, real_cls = self.D(self._augment(real), y)
            fake_logits, fake_cls = self.D(self._augment(fake.detach()), y)
        real_logits = real_logits.float()
        loss_d = losses.d_loss(cfg.loss, real_logits, fake_logits.float())
        terms["d_loss"] = loss_d.detach()
        if real_cls is not None and fake_cls is not None:
            cls = losses.class_loss(real_cls, y_raw) + losses.class_loss(fake_cls, y)
            loss_d = loss_d + cls
            terms["cls_loss"] = cls.detach()
        scale = self.scaler_d.get_scale() if self.scaler_d.is_enabled() else 1.0
        if cfg.loss == "wgan-gp":
            gp = losses.gradient_penalty(lambda x: self._critic(x, y), real, fake, scale)
            loss_d = loss_d + losses.WGAN_GP_LAMBDA * gp
            terms["gp"] = gp.detach()
        if r1_now:
            r1 = losses.r1_penalty(real_logits, real, scale)
            loss_d = loss_d + (cfg.r1_gamma / 2) * cfg.r1_every * r1
            terms["r1"] = r1.detach()
        optimise(self.opt_d, self.scaler_d, loss_d, self.D, self.info)
        if self.ada is not None:
            self.ada_acc += torch.stack([real_logits.detach().sign().sum(), real_logits.new_full((), len(real_logits))])

        self.D.requires_grad_(False)  # G's step needs no discriminator weight gradients
        with self.rt.autocast():
            logits, cls_logits = self.D(self._augment(fake), y)
        loss_g = losses.g_loss(cfg.loss, logits.float())
        terms["g_loss"] = loss_g.detach()
        if cls_logits is not None:
            loss_g = loss_g + losses.class_loss(cls_logits, y)
        optimise(self.opt_g, self.scaler_g, loss_g, self.G, self.info)
        average_buffers((self.G, self.D), self.info)
        if self.ada is not None and (step + 1) % ADA_INTERVAL == 0:
            self._update_ada()
        return terms

    def _critic(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with self.rt.autocast():
            return self.D(self._augment(x), y)[0].float()

    def _update_ada(self) -> None:
        assert self.ada is not None
        total = all_reduce_sum(self.ada_acc, self.info).tolist()
        if total[1] > 0:
            self.ada.update(total[0] / total[1], n_images=int(total[1]))
        self.ada_acc.zero_()

    def log_values(self) -> dict[str, float]:
        return {"aug_p": self.ada.p if self.ada is not None else 0.0}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def state_dict(self) -> dict[str, Any]:
        return {
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "augment": self.ada.state_dict() if self.ada is not None else None,
            "ada_acc": self.ada_acc.cpu(),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.D.load_state_dict(ck["D"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        if self.scaler_g.is_enabled() and ck["scaler_g"]:
            self.scaler_g.load_state_dict(ck["scaler_g"])
            self.scaler_d.load_state_dict(ck["scaler_d"])
        if self.ada is not None and ck["augment"] is not None:
            self.ada.load_state_dict(ck["augment"])
        self.ada_acc.copy_(ck["ada_acc"])
