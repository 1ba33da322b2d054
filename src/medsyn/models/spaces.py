"""Hyper-parameter search spaces for `medsyn tune`, declared beside the models they tune.

A space is a list of `Param`s; each names a training setting as `medsyn train --config` spells it: a
`TrainConfig` field (`lr_g`, `width`, `loss`, ...), `beta1` / `beta2` (the two halves of `betas`), or
`extra.KEY` (a model option in `model_extra`, e.g. `extra.embed_dim`). Every value a space can produce is
therefore a config that `medsyn train` accepts, and the best trial is written back as such a YAML file.

Ranges are for CPU-scale budgets (minutes per trial): widths up to 64, learning rates around the
literature's values (Radford et al. 2016; Karras et al. 2020; Ho et al. 2020). Plain data, no Optuna here:
`medsyn.tune.space` turns a space into suggestions. A model without its own space gets its family's
(`gan` or `diffusion`) common one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medsyn.errors import ConfigError
from medsyn.models.config import MODELS


@dataclass(frozen=True)
class Param:
    """One tuned setting: a float range (`low`..`high`, `log` scale) or a list of `choices`."""

    name: str  # TrainConfig field, 'beta1' / 'beta2', or 'extra.KEY'
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    default: Any = None  # for extra.KEY: the model's own default (TrainConfig fields read theirs from the config)

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ConfigError(f"search parameter {self.name}: give either low/high or choices")


def _lr(name: str, low: float, high: float) -> Param:
    return Param(name, low, high, log=True)


_GAN_COMMON = (
    _lr("lr_g", 5e-5, 1e-3),
    _lr("lr_d", 5e-5, 1e-3),
    Param("beta1", choices=(0.0, 0.5)),
    Param("beta2", choices=(0.9, 0.99, 0.999)),
    Param("ema_decay", choices=(0.99, 0.995, 0.999)),
    Param("augment", choices=("none", "diffaugment", "ada")),
)
_DCGAN_FAMILY = (
    *_GAN_COMMON,
    Param("width", choices=(16, 32, 64)),
    Param("loss", choices=("ns", "hinge")),
    Param("r1_gamma", choices=(0.0, 0.01, 0.1, 1.0)),
    Param("extra.d_norm", choices=("batch", "spectral"), default="batch"),
    Param("extra.mbstd", choices=(0, 4), default=4),  # minibatch-stddev group in D (0: off)
    Param("extra.sample_bn", choices=("running", "batch"), default="batch"),  # G's BatchNorm statistics when sampling
)
_CONDITIONAL_DCGAN = (*_DCGAN_FAMILY, Param("extra.embed_dim", choices=(16, 32, 64, 128), default=64))
_DIFFUSION_COMMON = (
    _lr("lr_g", 5e-5, 1e-3),
    Param("width", choices=(16, 32, 64)),
    Param("ema_decay", choices=(0.999, 0.9995, 0.9999)),
)

SPACES: dict[str, tuple[Param, ...]] = {
    "dcgan": _DCGAN_FAMILY,
    "cgan": _CONDITIONAL_DCGAN,
    "acgan": _CONDITIONAL_DCGAN,
    "stylegan2": (
        _lr("lr_g", 5e-4, 5e-3),
        _lr("lr_d", 5e-4, 5e-3),
        Param("beta2", choices=(0.99, 0.999)),
        Param("ema_decay", choices=(0.99, 0.995, 0.999)),
        Param("augment", choices=("none", "diffaugment", "ada")),
        Param("width", choices=(16, 32)),
        Param("r1_gamma", choices=(0.01, 0.1, 1.0, 10.0)),
        Param("extra.mapping_layers", choices=(2, 4), default=2),
        Param("extra.w_dim", choices=(128, 256), default=256),
    ),
    "ddpm": (
        *_DIFFUSION_COMMON,
        Param("extra.p_uncond", choices=(0.0, 0.1, 0.2), default=0.1),
        Param("extra.guidance", 1.0, 4.0, default=2.0),
        Param("extra.ddim_steps", choices=(10, 20, 50), default=20),
        Param("extra.res_blocks", choices=(1, 2), default=2),
    ),
}
# twostage: its stages take no augmentation (a mask must stay aligned with its image), so no `augment`
SPACES["twostage"] = (
    *(p for p in _GAN_COMMON if p.name != "augment"),
    Param("width", choices=(16, 32, 64)),
    Param("loss", choices=("ns", "hinge")),
    Param("extra.l1_weight", choices=(10.0, 50.0, 100.0), default=100.0),
)
FAMILY_SPACES: dict[str, tuple[Param, ...]] = {"gan": _GAN_COMMON, "diffusion": _DIFFUSION_COMMON}


def space_for(model: str) -> tuple[Param, ...]:
    """The model's search space, or its family's common one; ConfigError (one line) for an unknown model."""
    info = MODELS.get(model)
    if info is None:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return SPACES.get(model, FAMILY_SPACES[info.family])
