"""One place that maps a model name to its generator/discriminator classes."""

from __future__ import annotations

from typing import Any

from medsyn.errors import ConfigError
from medsyn.models.base import Discriminator, Generator
from medsyn.models.config import MODELS, GANConfig
from medsyn.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.ldm import LatentDiffusionGenerator
from medsyn.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from medsyn.models.twostage import TwoStageGenerator

_Pair = tuple[type[Generator], type[Discriminator] | None]
_CLASSES: dict[str, _Pair] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "cgan": (DCGANGenerator, DCGANDiscriminator),
    "acgan": (DCGANGenerator, DCGANDiscriminator),
    "stylegan2": (StyleGAN2Generator, StyleGAN2Discriminator),
    "ddpm": (DiffusionGenerator, None),  # a diffusion model has no discriminator
    "ldm": (LatentDiffusionGenerator, None),  # its autoencoder is part of the generator (models/ldm.py)
    "twostage": (TwoStageGenerator, None),  # one discriminator per stage, built by train/twostage.py
}
assert set(_CLASSES) == set(MODELS)


def _classes(cfg: GANConfig | dict[str, Any]) -> tuple[GANConfig, _Pair]:
    if isinstance(cfg, dict):
        cfg = GANConfig.from_dict(cfg)
    if cfg.name not in _CLASSES:
        raise ConfigError(f"unknown model {cfg.name!r}; choose one of {', '.join(_CLASSES)}")
    return cfg, _CLASSES[cfg.name]


def build_gan(cfg: GANConfig | dict[str, Any]) -> tuple[Generator, Discriminator]:
    """Build (G, D) in train mode; weights depend only on the torch seed (G is initialised first)."""
    cfg, (gen_cls, disc_cls) = _classes(cfg)
    if disc_cls is None:
        raise ConfigError(f"{cfg.name} is a {MODELS[cfg.name].family} model without a discriminator; "
                          "use build_generator")
    return gen_cls(cfg), disc_cls(cfg)


def has_discriminator(name: str) -> bool:
    """Whether `build_gan` builds a (G, D) pair for this model (GANs of one stage)."""
    return _CLASSES[name][1] is not None


def build_generator(cfg: GANConfig | dict[str, Any]) -> Generator:
    """Build only G (loading a checkpoint needs no discriminator)."""
    cfg, (gen_cls, _) = _classes(cfg)
    return gen_cls(cfg)
