"""Model configuration and the registry of model facts the trainer needs (family, optimiser, GAN loss/R1)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from medsyn.errors import ConfigError

#: Image sizes every model in the zoo supports: 2^k (4x4 start) and 7*2^k (7x7 start, MedMNIST's 28 px).
SUPPORTED_SIZES: tuple[int, ...] = (16, 28, 32, 56, 64, 112, 128, 224, 256)
#: Most output channels: an image has 1 or 3, a mask generator one per foreground label (data.masks.MAX_LABEL).
MAX_CHANNELS = 8


@dataclass
class GANConfig:
    """Everything needed to rebuild a generator/discriminator pair; stored next to every checkpoint."""

    name: str
    size: int = 64
    channels: int = 1
    num_classes: int = 0
    z_dim: int = 100
    width: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = copy.deepcopy(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GANConfig:
        """Inverse of `to_dict`; unknown keys are an error so a typo in a YAML file is not ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; expected some of {sorted(known)}")
        if "name" not in d:
            raise ConfigError("model config needs a 'name' (one of " + ", ".join(MODELS) + ")")
        kw = dict(d)
        kw["extra"] = copy.deepcopy(dict(kw.get("extra") or {}))
        return cls(**kw)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one architecture, so the trainer picks sensible defaults without model-specific code.

    `family` says which training step applies: 'gan' (generator + discriminator) or 'diffusion' (one
    denoiser, no discriminator). The GAN-only facts (loss, R1, discriminator learning rate) are None for
    diffusion models; `lr_g` is the learning rate of the generator or denoiser."""

    name: str
    conditional: bool  # True: needs num_classes > 0 and uses y; False: trained per class, y ignored
    default_loss: str | None  # 'ns' | 'hinge' | 'wgan-gp'; None: not a GAN
    r1_gamma: float | None  # 0 = no R1 penalty; None: not a GAN
    lr_g: float
    lr_d: float | None  # None: no discriminator
    betas: tuple[float, float]
    description: str
    sizes: tuple[int, ...] = SUPPORTED_SIZES
    family: str = "gan"  # 'gan' | 'diffusion'
    masks: bool = False  # trains on image + mask pairs; conditional on the labels when the set has any


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            "dcgan", False, "ns", 0.0, 2e-4, 2e-4, (0.5, 0.999),
            "Radford et al. 2016: ConvTranspose/BN/ReLU generator, Conv/BN/LeakyReLU discriminator; "
            "unconditional (one model per class).",
        ),
        ModelInfo(
            "cgan", True, "hinge", 0.0, 2e-4, 2e-4, (0.5, 0.999),
            "Conditional DCGAN (Mirza & Osindero 2014): generator input [z; embed(y)], projection "
            "discriminator (Miyato & Koyama 2018) on the multi-hot label vector.",
        ),
        ModelInfo(
            "acgan", True, "ns", 0.0, 2e-4, 2e-4, (0.5, 0.999),
            "AC-GAN (Odena et al. 2017): conditional DCGAN generator, discriminator with an auxiliary "
            "multi-label classifier head (BCE on the multi-hot labels).",
        ),
        ModelInfo(
            "stylegan2", True, "ns", 0.1, 2.5e-3, 2.5e-3, (0.0, 0.99),
            "Compact StyleGAN2 (Karras et al. 2020): label-conditioned mapping network, modulated convs "
            "with noise, skip toRGB outputs, residual projection discriminator with minibatch-stddev, "
            "equalized LR; use with R1 and DiffAugment/ADA.",
        ),
        ModelInfo(
            "ddpm", True, None, None, 2e-4, None, (0.9, 0.999),
            "Class-conditional DDPM (Ho et al. 2020) on MONAI's DiffusionModelUNet: multi-hot labels as a sum "
            "of learned class embeddings, label dropout for classifier-free guidance, DDIM sampling.",
            family="diffusion",
        ),
        ModelInfo(
            "ldm", True, None, None, 2e-4, None, (0.9, 0.999),
            "Class-conditional latent diffusion (Rombach et al. 2022): MONAI's AutoencoderKL trained first, then "
            "the ddpm denoiser (same conditioning and guidance) on its scaled latents; DDIM sampling, decoded.",
            family="diffusion",
        ),
        ModelInfo(
            "twostage", True, "ns", 0.0, 2e-4, 2e-4, (0.5, 0.999),
            "Two-stage mask-then-image GAN (Guibas et al. 2017): a DCGAN-family mask generator, then pix2pix "
            "(Isola et al. 2017; MONAI UNet + PatchDiscriminator, adversarial + L1) painting an image for each mask; "
            "label-conditioned when the set has labels.",
            masks=True,
        ),
    )
}


def resolution_plan(size: int) -> tuple[int, int]:
    """Return (base, n_doublings) with size == base * 2**n_doublings and base in {4, 7}."""
    if size not in SUPPORTED_SIZES:
        raise ConfigError(f"image size {size} is not supported; use one of {list(SUPPORTED_SIZES)}")
    base = 7 if size % 7 == 0 else 4
    return base, (size // base).bit_length() - 1


def stage_channels(width: int, size: int, res: int, max_mult: int) -> int:
    """Feature channels at resolution `res`: width at full size, doubling per halving, capped."""
    return width * min(max_mult, max(1, size // res))


def validate(cfg: GANConfig, extra_defaults: dict[str, Any]) -> dict[str, Any]:
    """Check the generic fields; return `extra` merged over the model's defaults (unknown keys rejected)."""
    info = MODELS.get(cfg.name)
    if info is None:
        raise ConfigError(f"unknown model {cfg.name!r}; choose one of {', '.join(MODELS)}")
    if cfg.size not in info.sizes:
        raise ConfigError(f"{cfg.name}: image size {cfg.size} unsupported; use one of {list(info.sizes)}")
    if not isinstance(cfg.channels, int) or not 1 <= cfg.channels <= MAX_CHANNELS:  # >3: a mask generator's labels
        raise ConfigError(f"{cfg.name}: channels must be 1 or 3 (images) or up to {MAX_CHANNELS} (one per mask label), "
                          f"got {cfg.channels}")  # fmt: skip
    for key in ("num_classes", "z_dim", "width"):
        value = getattr(cfg, key)
        low = 0 if key == "num_classes" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{cfg.name}: {key} must be an integer >= {low}, got {value!r}")
    if info.conditional and cfg.num_classes == 0 and not info.masks:
        raise ConfigError(f"{cfg.name} is a conditional model and needs num_classes > 0")
    if not isinstance(cfg.extra, dict):
        raise ConfigError(f"{cfg.name}: extra must be a mapping, got {type(cfg.extra).__name__}")
    unknown = sorted(set(cfg.extra) - set(extra_defaults))
    if unknown:
        raise ConfigError(f"{cfg.name}: unknown extra option(s) {unknown}; known: {sorted(extra_defaults)}")
    return {**extra_defaults, **cfg.extra}
