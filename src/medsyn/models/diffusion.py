"""Class-conditional denoising diffusion (DDPM training, DDIM sampling) built from MONAI's generative parts.

The denoiser is MONAI's `DiffusionModelUNet`; its class-embedding slot gets `MultiHotEmbedding` instead of an
`nn.Embedding`, so a multi-hot label vector (several findings at once) conditions the model as the sum of one
learned embedding per positive class. Classifier-free guidance (Ho & Salimans 2022) needs a *null* condition
that differs from "no positive label" (all zeros, e.g. 'No Finding'): a dropped label is the context row filled
with `NULL_FILL`, which the embedding maps to its own learned 'dropped' vector. `DiffusionInferer` (training
loss input, sampling loop with guidance) and `DDPMScheduler`/`DDIMScheduler` come from MONAI unchanged.

`DiffusionGenerator` fits the GAN `Generator` contract so generation, the privacy filter and export need no
diffusion-specific code: `G(z, y)` reads z (B, C*S*S) as the initial noise x_T and runs DDIM with eta = 0, so
the image is a deterministic function of (z, y), exactly like a GAN generator.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.base import Generator
from medsyn.models.config import GANConfig, validate

#: The unconditional ("label dropped") context row; MONAI's inferer fills the CFG branch with this value.
NULL_FILL = -1.0
Draws = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]  # label dropout, noise, timesteps (`draw`)

DDPM_DEFAULTS: dict[str, Any] = {
    "mult": [1, 2, 2],  # channel multiplier per UNet level (width * mult); len - 1 downsamplings
    "attention": [False, False, True],  # self-attention per level (the coarsest, as in Ho et al. 2020)
    "res_blocks": 2,  # residual blocks per level
    "norm_groups": 8,  # GroupNorm groups (channels must divide)
    "timesteps": 1000,  # training diffusion steps
    "schedule": "linear_beta",  # MONAI noise schedule: linear_beta | scaled_linear_beta | cosine
    "p_uncond": 0.1,  # label dropout for classifier-free guidance
    "ddim_steps": 20,  # default sampling steps (generate --ddim-steps overrides)
    "guidance": 2.0,  # default guidance scale (generate --guidance overrides; 1 = no guidance)
}


class MultiHotEmbedding(nn.Module):
    """Sum of one learned vector per positive class, or the learned 'dropped' vector for a NULL_FILL row.

    A bias-free Linear on [y, dropped] is exactly that sum; it replaces MONAI's nn.Embedding in the UNet's
    class-embedding slot (MONAI calls `self.class_embedding(class_labels)` without casting, so a float
    multi-hot tensor passes through)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_classes + 1, dim, bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        dropped = (y == NULL_FILL).all(dim=1, keepdim=True)
        y = torch.where(dropped, torch.zeros_like(y), torch.nan_to_num(y, nan=0.0))
        return self.proj(torch.cat([y, dropped.to(y.dtype)], dim=1).to(self.proj.weight.dtype))


class ConditionalUNet(nn.Module):
    """MONAI's DiffusionModelUNet taking the label vector as `context` (the argument DiffusionInferer passes)
    and routing it to the class-embedding path, added to the time embedding."""

    def __init__(self, cfg: GANConfig, opts: dict[str, Any], in_channels: int) -> None:
        super().__init__()
        k = max(cfg.num_classes, 1)
        self.num_classes = cfg.num_classes
        channels = [cfg.width * int(m) for m in opts["mult"]]
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=in_channels,
            num_res_blocks=int(opts["res_blocks"]),
            channels=channels,
            attention_levels=[bool(a) for a in opts["attention"]],
            norm_num_groups=int(opts["norm_groups"]),
            num_head_channels=channels,  # one head per attention level: small models, CPU
            num_class_embeds=k + 1,  # creates the slot; replaced just below
            use_flash_attention=True,  # torch's scaled_dot_product_attention, also the fast path on CPU
        )
        self.unet.class_embedding = MultiHotEmbedding(k, channels[0] * 4)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:  # unconditional model: every row is 'no label'
            context = x.new_zeros(x.shape[0], max(self.num_classes, 1))
        return self.unet(x, timesteps, class_labels=context.to(x.device))


def validated_unet(cfg: GANConfig, opts: dict[str, Any], size: int, what: str = "image size") -> dict[str, Any]:
    """Check the denoiser options for a `size` x `size` input (the image, or a latent diffusion's latent)."""
    levels = len(opts["mult"])
    if levels < 1 or len(opts["attention"]) != levels:
        raise ConfigError(f"{cfg.name}: 'mult' and 'attention' need one entry per UNet level, got {opts}")
    if size % 2 ** (levels - 1):
        raise ConfigError(
            f"{cfg.name}: {what} {size} is not divisible by 2^{levels - 1} for a {levels}-level UNet; "
            "use fewer levels (model extra 'mult'/'attention') or another size"
        )
    if any((cfg.width * int(m)) % int(opts["norm_groups"]) for m in opts["mult"]):
        raise ConfigError(f"{cfg.name}: width {cfg.width} x mult {opts['mult']} must divide by norm_groups")
    if not 0.0 <= float(opts["p_uncond"]) < 1.0:
        raise ConfigError(f"{cfg.name}: p_uncond must be in [0, 1), got {opts['p_uncond']}")
    check_sampling(int(opts["ddim_steps"]), float(opts["guidance"]), int(opts["timesteps"]))
    return opts


def check_sampling(steps: int, guidance: float, timesteps: int) -> None:
    """DDIM step count and guidance scale a user may set at generation time."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"DDIM steps must be between 1 and the {timesteps} training steps, got {steps}")
    if not guidance >= 0:
        raise ConfigError(f"guidance scale must be >= 0 (1 = plain conditional, 0 = unconditional), got {guidance}")


class DiffusionGenerator(Generator):
    """A DDPM denoiser behind the Generator contract: forward(z, y) = DDIM(x_T = z.view(image), y).

    `loss(x0, y)` is the training objective (epsilon-prediction MSE with label dropout); `sampling(...)`
    changes the DDIM step count and guidance scale used by forward. The latent diffusion model
    (models/ldm.py) is this class with another space: `shape` (what the denoiser works on), `_models()` (the
    networks MONAI's inferer takes) and `_inferer` differ, the conditioning, loss and sampler are these."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        self.opts = self.options(cfg)
        self.shape = self.space(cfg, self.opts)  # (channels, size, size) the denoiser works on
        self.z_dim = math.prod(self.shape)  # the noise is an image (or latent); cfg.z_dim does not apply
        self.net = ConditionalUNet(cfg, self.opts, self.shape[0])
        timesteps, schedule = int(self.opts["timesteps"]), str(self.opts["schedule"])
        self.train_scheduler = DDPMScheduler(num_train_timesteps=timesteps, schedule=schedule)
        self.sampler = DDIMScheduler(num_train_timesteps=timesteps, schedule=schedule)
        self.inferer = self._inferer(self.train_scheduler)
        self.ddim_steps, self.guidance = 0, 0.0
        self.sampling(int(self.opts["ddim_steps"]), float(self.opts["guidance"]))

    @classmethod
    def options(cls, cfg: GANConfig) -> dict[str, Any]:
        """The model's extra options merged over its defaults and checked (one-line ConfigError)."""
        return validated_unet(cfg, validate(cfg, DDPM_DEFAULTS), cfg.size)

    @staticmethod
    def space(cfg: GANConfig, opts: dict[str, Any]) -> tuple[int, int, int]:
        return (cfg.channels, cfg.size, cfg.size)

    def _inferer(self, scheduler: DDPMScheduler) -> DiffusionInferer:
        return DiffusionInferer(scheduler)

    def _models(self) -> tuple[nn.Module, ...]:
        """The networks the inferer is called with, before its noise argument."""
        return (self.net,)

    def _noise(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x0)

    def sampling(self, steps: int | None = None, guidance: float | None = None) -> dict[str, Any]:
        """Set (None: keep) the DDIM step count and guidance scale; returns the settings now in use."""
        steps = self.ddim_steps if steps is None else int(steps)
        guidance = self.guidance if guidance is None else float(guidance)
        check_sampling(steps, guidance, int(self.opts["timesteps"]))
        self.ddim_steps, self.guidance = steps, guidance
        self.sampler.set_timesteps(steps)
        return {"sampler": "ddim", "ddim_steps": steps, "eta": 0.0, "guidance": guidance}

    def loss(
        self, x0: torch.Tensor, y: torch.Tensor | None, per_sample: bool = False, draws: Draws | None = None
    ) -> torch.Tensor:
        """Noise-prediction MSE at uniform random timesteps; a p_uncond share of rows gets the null label.
        `per_sample`: one mean per image (B,), which differentially private training clips image by image.
        `draws`: the random choices (`draw`) to use instead of fresh ones (to rerun images of a batch alone)."""
        context = self._labels(y, x0.shape[0], x0)
        drop, noise, t = draws if draws is not None else self.draw(x0, context is not None)
        if context is not None and drop is not None:
            context = torch.where(drop, torch.full_like(context, NULL_FILL), context)
        pred = self.inferer(x0, *self._models(), noise, t, condition=context)
        if per_sample:
            return (pred.float() - noise.float()).square().flatten(1).mean(dim=1)
        return nn.functional.mse_loss(pred.float(), noise.float())

    def draw(self, x0: torch.Tensor, conditional: bool) -> Draws:
        """The training loss's random choices per image: label dropout (None: no label or p_uncond 0), noise,
        timestep."""
        drop = None
        if conditional and self.opts["p_uncond"] > 0:
            drop = torch.rand(x0.shape[0], 1, device=x0.device) < float(self.opts["p_uncond"])
        noise = self._noise(x0)
        t = torch.randint(0, self.train_scheduler.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return drop, noise, t

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"{self.cfg.name}: z must have shape (B, {self.z_dim}): noise shaped like the denoiser's input "
                f"{self.shape}"
            )
        x_t = z.reshape(-1, *self.shape)
        context = self._labels(y, z.shape[0], z)
        guided = context is not None and self.guidance != 1.0
        with torch.no_grad():
            x = self.inferer.sample(
                x_t,
                *self._models(),
                scheduler=self.sampler,
                conditioning=context,
                verbose=False,
                cfg=self.guidance if guided else None,
                cfg_fill_value=NULL_FILL,
            )
        assert isinstance(x, torch.Tensor)
        return x.clamp(-1.0, 1.0)
