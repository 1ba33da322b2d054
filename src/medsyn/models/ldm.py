"""Class-conditional latent diffusion (Rombach et al. 2022) from MONAI's generative parts.

Stage 1 is MONAI's `AutoencoderKL` (`LatentAutoencoder`: L1 reconstruction + a small KL term, trained by
train/autoencoder.py); stage 2 is the DDPM of models/diffusion.py run on its latents through MONAI's
`LatentDiffusionInferer`: the same multi-hot label embedding, null label for classifier-free guidance, noise
schedule, loss and DDIM sampler (`LatentDiffusionGenerator` only changes the space the denoiser works in).
The latents are multiplied by `scale_factor` = 1 / std of the first latents of real images, so the
denoiser sees unit-variance inputs as its noise schedule assumes (MONAI's 2D LDM tutorial convention).

`G(z, y)` reads z (B, latent_channels * L * L) as the latent x_T, runs DDIM with eta 0 in latent space and
decodes: an image that is a deterministic function of (z, y), like every medsyn generator, so generation,
the privacy filter, `--balance` and export need no LDM-specific code.

Defaults, and why:
- `ae_mult` 'auto': [1, 2] (downsampling f = 2) up to 64 px, [1, 2, 2] (f = 4) above. Without a perceptual
  loss (no pretrained weights here) an f = 4 autoencoder blurs 28-64 px radiographs; f = 2 already cuts the
  denoiser's pixels 4x (28 px -> 14x14 latents), which is where the CPU time goes. At 128-256 px f = 4 gives
  32-64 px latents, the range Rombach et al. found best (f = 4-8), and the GPU UNet stays affordable.
- `latent_channels` 3 (MONAI's tutorial; Rombach et al. use 3-4 at f = 4).
- `ae_width` half the model width, `ae_res_blocks` 1, no autoencoder attention: the autoencoder only has to
  compress, and on a CPU its step should cost less than the denoiser's (at 28 px, width 32, one thread, the
  full-width autoencoder cost as much per step as the denoiser; halving its width cuts it about 3x).
- `ae_lr` 1e-3: a small convolutional autoencoder converges faster than at the denoiser's 2e-4 (PneumoniaMNIST
  28 px, width 16: L1 0.070 against 0.100 after 100 steps); it never trains adversarially here, so it is stable.
- `mult` / `attention` 'auto': a 3-level UNet [1, 2, 2] with attention at the coarsest level when the latent
  side divides by 4 (16, 32, 64 px latents), else 2 levels [1, 2] (the 14 px latents of 28 px images);
  attention only at the coarsest level keeps it cheap (49-256 tokens).
- `kl_weight` 1e-6 (Rombach et al., MONAI): the KL only keeps the latent scale in check; `ae_share` 0.25: the
  autoencoder stage may use a quarter of `--time-limit`, the denoiser the rest (see train/ldm.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import AutoencoderKL
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.base import Generator
from medsyn.models.config import GANConfig, validate
from medsyn.models.diffusion import DDPM_DEFAULTS, DiffusionGenerator, validated_unet

LDM_DEFAULTS: dict[str, Any] = {
    **DDPM_DEFAULTS,
    "mult": "auto",  # denoiser UNet levels on the latent (see the module docstring)
    "attention": "auto",
    "latent_channels": 3,
    "ae_mult": "auto",  # autoencoder channel multipliers; len - 1 downsamplings (f = 2^(len-1))
    "ae_width": None,  # autoencoder channels at full resolution; None: half the model width (>= norm_groups)
    "ae_res_blocks": 1,
    "ae_attention": False,  # MONAI's non-local attention blocks at the autoencoder's bottleneck
    "kl_weight": 1e-6,
    "ae_lr": 1e-3,  # the autoencoder's AdamW learning rate (--lr-g is the denoiser's)
    "ae_share": 0.25,  # share of --time-limit the autoencoder stage may use
    "ae_steps": None,  # autoencoder steps; None: steps * ae_share / (1 - ae_share)
}


def ldm_options(cfg: GANConfig) -> dict[str, Any]:
    """The LDM's extra options over its defaults, 'auto' resolved for cfg.size, checked (one-line errors)."""
    opts = validate(cfg, LDM_DEFAULTS)
    if opts["ae_mult"] == "auto":
        opts["ae_mult"] = [1, 2] if cfg.size <= 64 else [1, 2, 2]
    mult = opts["ae_mult"]
    if not isinstance(mult, list) or not mult or not all(isinstance(m, int) and m >= 1 for m in mult):
        raise ConfigError(f"{cfg.name}: ae_mult must be a list of positive integers, got {mult!r}")
    factor = 2 ** (len(mult) - 1)
    if cfg.size % factor:
        raise ConfigError(
            f"{cfg.name}: image size {cfg.size} is not divisible by the autoencoder's downsampling {factor} "
            f"({len(mult)} 'ae_mult' levels); use fewer levels or another size"
        )
    groups = int(opts["norm_groups"])
    if opts["ae_width"] is None:
        opts["ae_width"] = max(groups, cfg.width // 2)
    width = opts["ae_width"]
    if not isinstance(width, int) or isinstance(width, bool) or width < 1 or any((width * m) % groups for m in mult):
        raise ConfigError(f"{cfg.name}: ae_width {width!r} x ae_mult {mult} must be integers dividing by norm_groups "
                          f"{groups}")  # fmt: skip
    latent = cfg.size // factor
    if opts["mult"] == "auto" or opts["attention"] == "auto":
        levels = 1
        while levels < 3 and latent % 2**levels == 0 and latent // 2**levels >= 4:
            levels += 1
        opts["mult"] = [1, 2, 2][:levels] if opts["mult"] == "auto" else opts["mult"]
        if opts["attention"] == "auto":
            opts["attention"] = [False] * (len(opts["mult"]) - 1) + [True]
    _check(cfg, opts)
    return validated_unet(cfg, opts, latent, "latent size")


def _check(cfg: GANConfig, opts: dict[str, Any]) -> None:
    for key in ("latent_channels", "ae_res_blocks"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
            raise ConfigError(f"{cfg.name}: {key} must be a positive integer, got {opts[key]!r}")
    if not isinstance(opts["kl_weight"], int | float) or not opts["kl_weight"] >= 0:
        raise ConfigError(f"{cfg.name}: kl_weight must be a number >= 0, got {opts['kl_weight']!r}")
    if not isinstance(opts["ae_lr"], int | float) or not opts["ae_lr"] > 0:
        raise ConfigError(f"{cfg.name}: ae_lr must be a positive number, got {opts['ae_lr']!r}")
    if not isinstance(opts["ae_share"], int | float) or not 0 < opts["ae_share"] < 1:
        raise ConfigError(f"{cfg.name}: ae_share (the autoencoder's share of the time limit) must be in (0, 1), "
                          f"got {opts['ae_share']!r}")  # fmt: skip
    steps = opts["ae_steps"]
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ConfigError(f"{cfg.name}: ae_steps must be a positive integer (or null), got {steps!r}")


def latent_shape(cfg: GANConfig, opts: dict[str, Any]) -> tuple[int, int, int]:
    side = cfg.size // 2 ** (len(opts["ae_mult"]) - 1)
    return (int(opts["latent_channels"]), side, side)


class LatentAutoencoder(Generator):
    """Stage 1: MONAI's AutoencoderKL (`vae`). As a Generator, forward(z, y) decodes the latent z (y unused)."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        self.opts = ldm_options(cfg)
        self.shape = latent_shape(cfg, self.opts)
        self.z_dim = math.prod(self.shape)
        levels = len(self.opts["ae_mult"])
        attend = bool(self.opts["ae_attention"])
        self.vae = AutoencoderKL(
            spatial_dims=2,
            in_channels=cfg.channels,
            out_channels=cfg.channels,
            num_res_blocks=int(self.opts["ae_res_blocks"]),
            channels=[int(self.opts["ae_width"]) * m for m in self.opts["ae_mult"]],
            attention_levels=[False] * levels,
            latent_channels=int(self.opts["latent_channels"]),
            norm_num_groups=int(self.opts["norm_groups"]),
            with_encoder_nonlocal_attn=attend,
            with_decoder_nonlocal_attn=attend,
            use_flash_attention=True,
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.vae.decode(z.reshape(-1, *self.shape)).clamp(-1.0, 1.0)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of x (no sampling noise): what the sample grids of stage 1 show."""
        return self.vae.reconstruct(x).clamp(-1.0, 1.0)


class LatentDiffusionGenerator(DiffusionGenerator):
    """The DDPM denoiser on a frozen LatentAutoencoder's scaled latents; forward(z, y) = decode(DDIM(z, y))."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        self.autoencoder = LatentAutoencoder(cfg).requires_grad_(False)
        # a frozen parameter rather than a buffer: saved and loaded with the weights, kept out of the optimiser
        # (requires_grad False) and of buffer averaging under DDP
        self.scale_factor = nn.Parameter(torch.ones(()), requires_grad=False)

    @classmethod
    def options(cls, cfg: GANConfig) -> dict[str, Any]:
        return ldm_options(cfg)

    @staticmethod
    def space(cfg: GANConfig, opts: dict[str, Any]) -> tuple[int, int, int]:
        return latent_shape(cfg, opts)

    def _inferer(self, scheduler: DDPMScheduler) -> LatentDiffusionInferer:
        return LatentDiffusionInferer(scheduler, scale_factor=1.0)

    def _models(self) -> tuple[nn.Module, ...]:
        self.inferer.scale_factor = self.scale_factor  # the loaded value, whatever the inferer was built with
        return (self.autoencoder.vae, self.net)

    def _noise(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.randn((x0.shape[0], *self.shape), device=x0.device)

    @torch.no_grad()
    def set_autoencoder(self, weights: dict[str, torch.Tensor], images: torch.Tensor, seed: int = 0) -> float:
        """Load stage 1's weights and set the scale factor to 1 / std of the latents of `images` (real, in
        [-1, 1]); the posterior sample uses a private seed, so the caller's random streams are untouched."""
        self.autoencoder.load_state_dict(weights)
        dev = images.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            z = self.autoencoder.vae.encode_stage_2_inputs(images.float())
        std = float(z.float().std())
        if not math.isfinite(std) or std <= 0:
            raise ConfigError(f"{self.cfg.name}: the autoencoder's latents have std {std}; retrain stage 1")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std
