"""Option parsers shared by several commands."""

from __future__ import annotations

import re

from medsyn.errors import ConfigError

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str, option: str = "duration") -> float:
    """'300', '300s', '5m', '1.5h' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{option} must be a positive duration like 300, 300s, 5m or 1.5h, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]
