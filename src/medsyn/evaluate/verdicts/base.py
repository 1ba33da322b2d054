"""The verdict type, how checks combine (`overall`) and the small formatting helpers of the rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medsyn.io import Result

_SEVERITY = {"pass": 0, "n/a": 1, "warn": 1, "fail": 2}


@dataclass
class Verdict(Result):
    check: str
    level: str  # "pass" | "warn" | "fail" | "n/a"
    reason: str
    decides: bool = True  # False: shown, but a privacy filter screened this space (not independent evidence)


def _graded(value: float, pass_at: float, warn_at: float, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "n/a"
    if not higher_is_better:
        value, pass_at, warn_at = -value, -pass_at, -warn_at
    return "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"


def _lower(entry: Mapping[str, Any], point: str, low: str) -> float:
    """The CI lower bound, or the point estimate when no bootstrap was run."""
    value = entry.get(low)
    return float(entry[point]) if value is None or not math.isfinite(value) else float(value)


def _pct(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"


def _num(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:+.3f}"


def _dec(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _fmt(v: Any) -> str:
    return "?" if v is None or not math.isfinite(v) else f"{v:.2f}"


def overall(question: str, checks: list[Verdict]) -> Verdict:
    """The worst deciding check decides; a check that could not run caps the verdict at WARN. With one check
    the reason is its own; with several it names the checks that decided (their reasons are in the report)."""
    shown = [c for c in checks if not c.decides]
    checks = [c for c in checks if c.decides]
    tail = f"; not deciding (filtered): {', '.join(c.check for c in shown)}" if shown else ""
    if shown and not checks:
        return Verdict(question, "warn", f"every check ran in a space the privacy filter screened, so none is "
                                         f"independent evidence{tail}")  # fmt: skip
    assessed = [c for c in checks if c.level != "n/a"]
    if not assessed:
        return Verdict(question, "n/a", "; ".join(c.reason for c in checks) or "not assessed")
    if len(checks) == 1:
        return Verdict(question, checks[0].level, checks[0].reason + tail)
    level = max((c.level for c in checks), key=_SEVERITY.__getitem__)
    if level == "pass":
        return Verdict(question, "pass", f"all {len(checks)} checks pass: " + ", ".join(c.check for c in checks) + tail)
    deciding = [c for c in checks if _SEVERITY[c.level] == _SEVERITY[level]]
    names = ", ".join(c.check + (" (not assessed)" if c.level == "n/a" else "") for c in deciding)
    verb = "fail" if level == "fail" else "need attention"
    return Verdict(
        question, "warn" if level == "n/a" else level, f"{len(deciding)} of {len(checks)} checks {verb}: {names}{tail}"
    )
