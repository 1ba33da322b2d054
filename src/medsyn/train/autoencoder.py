"""Stage 1 of `--model ldm`: the autoencoder's update rule for the shared loop (loop.py).

L1 reconstruction of the real batch from a posterior sample plus `kl_weight` x the KL divergence of the
posterior from N(0, I), as in Rombach et al. 2022 and MONAI's 2D LDM tutorial, without the perceptual loss
(it needs pretrained ImageNet weights, which medsyn does not download) and without the patch discriminator
(it would double the step's cost on a CPU). AdamW at the run's learning rate, as for the denoiser, whose
optimiser, scaler and checkpoint state this reuses.
"""

from __future__ import annotations

import torch

from medsyn.models import GANConfig
from medsyn.models.ldm import LatentAutoencoder
from medsyn.train.config import TrainConfig
from medsyn.train.diffusion import DiffusionObjective
from medsyn.train.distributed import DistInfo
from medsyn.train.objective import optimise
from medsyn.train.runtime import Runtime


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (MONAI's tutorial)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * torch.log(sigma) - 1)
    return kl.flatten(1).sum(dim=1).mean()


class AutoencoderObjective(DiffusionObjective):
    """The LatentAutoencoder with the denoiser's optimiser, scaler and checkpoint state (train/diffusion.py)."""

    keys = ["l1", "kl_term"]  # kl_term = kl_weight x KL: the part of the loss the KL contributes

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo) -> None:
        super().__init__(cfg, model, rt, info)
        self.kl_weight = float(self.G.opts["kl_weight"])

    @staticmethod
    def build(model: GANConfig) -> LatentAutoencoder:
        return LatentAutoencoder(model)

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        with self.rt.autocast():
            recon, mu, sigma = self.G.vae(real)
        l1 = (recon.float() - real.float()).abs().mean()
        kl = self.kl_weight * kl_divergence(mu, sigma)
        optimise(self.opt, self.scaler, l1 + kl, self.G, self.info)
        return {"l1": l1.detach(), "kl_term": kl.detach()}
