"""From a model's declared search space (`medsyn.models.spaces`) to Optuna suggestions and back to a config.

    dists = distributions(space, base)          # fixed per study: the base config's values are always inside
    values = suggest(trial, dists)              # {'lr_g': 3e-4, 'beta1': 0.5, 'extra.embed_dim': 32, ...}
    cfg = apply(base, values)                   # a validated TrainConfig

The base config's own values are added to the choices (or the range widened to them), so the base config
itself is a point of the space: the study's first trial is the base config, the "default" to beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from medsyn.errors import ConfigError
from medsyn.models.spaces import Param
from medsyn.train.config import TrainConfig

EXTRA = "extra."


def base_value(param: Param, base: TrainConfig) -> Any:
    """The value the (resolved) base config has for `param`: what the default trial uses."""
    if param.name.startswith(EXTRA):
        return base.model_extra.get(param.name[len(EXTRA) :], param.default)
    if param.name in ("beta1", "beta2"):
        assert base.betas is not None  # resolved configs always carry betas
        return base.betas[param.name == "beta2"]
    if not hasattr(base, param.name):
        raise ConfigError(f"search parameter {param.name!r} is not a training setting")
    return getattr(base, param.name)


def distributions(space: Sequence[Param], base: TrainConfig) -> dict[str, BaseDistribution]:
    """Optuna distributions of the space, each holding the base config's value."""
    base = base.resolved()
    out: dict[str, BaseDistribution] = {}
    for p in space:
        value = base_value(p, base)
        if p.choices is not None:
            choices = tuple(p.choices) if value in p.choices else (*p.choices, value)
            if all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices):
                choices = tuple(sorted(choices))  # numbers in order (axes of the report's figures)
            out[p.name] = CategoricalDistribution(choices)
        else:
            assert p.low is not None and p.high is not None
            low, high = float(p.low), float(p.high)
            if value is not None:
                low, high = min(low, float(value)), max(high, float(value))
            out[p.name] = FloatDistribution(low, high, log=p.log)
    return out


def default_values(dists: Mapping[str, BaseDistribution], space: Sequence[Param], base: TrainConfig) -> dict[str, Any]:
    """The base config as a point of the space (enqueued as the first trial)."""
    resolved = base.resolved()
    return {p.name: base_value(p, resolved) for p in space if p.name in dists}


def suggest(trial: optuna.Trial, dists: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """One value per parameter, in the space's order."""
    out: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, dist.choices)
        else:
            assert isinstance(dist, FloatDistribution)
            out[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return out


def apply(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """`base` with the tuned values set; validated, so an impossible combination is a one-line ConfigError."""
    cfg = base.resolved()
    changes: dict[str, Any] = {}
    extra = dict(cfg.model_extra)
    betas = list(cfg.betas or (0.5, 0.999))
    for name, value in values.items():
        if name.startswith(EXTRA):
            extra[name[len(EXTRA) :]] = value
        elif name in ("beta1", "beta2"):
            betas[name == "beta2"] = float(value)
        else:
            changes[name] = value
    cfg = replace(cfg, **changes, model_extra=extra, betas=(betas[0], betas[1]))
    cfg.validate()
    return cfg
