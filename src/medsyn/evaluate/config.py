"""Settings dataclasses from YAML/JSON mappings: unknown keys and wrong types are one-line ConfigErrors.

A small hand-written coercion rather than pydantic: the settings are plain dataclasses that the rest of the
code (and `dataclasses.asdict` in metrics.json) already uses, and the messages name the exact key
(`ClassifierConfig.epochs must be an integer, got '10'`), which the tests pin down.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import numpy as np

from medsyn.errors import ConfigError

C = TypeVar("C")


def coerce_config(cls: type[C], value: C | Mapping[str, Any] | None) -> C:
    """`value` as a `cls` dataclass: None -> defaults; a mapping (YAML) -> unknown keys are an error."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{cls.__name__} must be a mapping or {cls.__name__}, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; expected some of {sorted(known)}")
    hints = get_type_hints(cls)
    return cls(**{k: _typed(f"{cls.__name__}.{k}", v, hints[k]) for k, v in value.items()})


def _typed(name: str, value: Any, tp: Any) -> Any:
    """`value` checked against the field type `tp` (YAML gives strings where a user quoted a number): a
    one-line ConfigError instead of a TypeError deep inside training. Whole floats count as integers."""
    args = get_args(tp)
    if type(None) in args:  # X | None
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if is_dataclass(tp):
        return coerce_config(tp, value)  # type: ignore[arg-type]
    if get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_typed(f"{name}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value)]
    number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))  # true is not 1 here
    if tp is int and number and float(value).is_integer():
        return int(value)
    if tp is float and number:
        return float(value)
    if tp in (int, float, bool, str) and (tp in (int, float) or not isinstance(value, tp)):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


def check_positive(owner: str, **values: float) -> None:
    for key, v in values.items():
        if not v > 0:
            raise ConfigError(f"{owner}.{key} must be positive, got {v!r}")
