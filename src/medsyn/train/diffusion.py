"""The diffusion update rule for the shared loop: one denoising (noise-prediction) step per batch (ddpm, and
the latent denoiser of ldm, whose frozen autoencoder is not optimised).

The loss itself (random timesteps, MONAI's DDPM noising, label dropout for classifier-free guidance) is the
model's (`DiffusionGenerator.loss`); this adds the optimiser, gradient scaler and data-parallel averaging.
AdamW at the model's learning rate, as in Ho et al. 2020 / Rombach et al. 2022; no discriminator.
"""

from __future__ import annotations

from typing import Any

import torch

from medsyn.models import GANConfig
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.registry import build_generator
from medsyn.train.config import TrainConfig
from medsyn.train.distributed import DistInfo, average_buffers
from medsyn.train.objective import optimise, to_device
from medsyn.train.runtime import Runtime


class DiffusionObjective:
    """A denoiser, its optimiser and gradient scaler."""

    keys = ["loss"]
    columns: list[str] = []

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo) -> None:
        self.rt, self.info = rt, info
        self.G = to_device(self.build(model), rt, info)
        trained = [p for p in self.G.parameters() if p.requires_grad]  # not an LDM's frozen autoencoder
        self.opt = torch.optim.AdamW(trained, lr=cfg.lr_g, betas=tuple(cfg.betas), fused=True)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")

    @staticmethod
    def build(model: GANConfig) -> Any:
        """The network this objective trains (the autoencoder stage of ldm builds its autoencoder instead)."""
        G = build_generator(model)
        assert isinstance(G, DiffusionGenerator)
        return G

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        with self.rt.autocast():
            loss = self.G.loss(real, y)
        optimise(self.opt, self.scaler, loss, self.G, self.info)
        average_buffers((self.G,), self.info)
        return {"loss": loss.detach()}

    def log_values(self) -> dict[str, float]:
        return {}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.opt.load_state_dict(ck["opt"])
        if self.scaler.is_enabled() and ck["scaler"]:
            self.scaler.load_state_dict(ck["scaler"])
