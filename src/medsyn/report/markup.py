"""Small HTML building blocks shared by the report's sections (escaping, numbers, tables, images, badges)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any

LEVEL_TEXT = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "n/a": "NOT ASSESSED"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def round_up(value: float, digits: int = 3) -> str:
    """`value` at `digits` significant digits, rounded up, so that a spent privacy budget (epsilon) is never
    printed below itself (`:.3g` rounds 1.2345 down to 1.23). Exact: the float's own decimal expansion is rounded."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:.{digits}g}"
    exact = Decimal(value)
    up = exact.quantize(Decimal(1).scaleb(exact.adjusted() - digits + 1), rounding=ROUND_CEILING)
    return f"{float(up):.{digits}g}"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _sig(value: Any, digits: int = 4) -> str:
    """Significant digits: FID and KID span many orders of magnitude across backbones."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _ci(entry: Mapping[str, Any], point: str = "auroc", lo: str = "ci_low", hi: str = "ci_high") -> str:
    text = _num(entry.get(point))
    if entry.get(lo) is not None and math.isfinite(entry[lo]):
        text += f" <span class=muted>({_num(entry[lo])}–{_num(entry.get(hi))})</span>"
    return text


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """`rows` cells are already-escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _img(b64: str | None, alt: str, caption: str = "") -> str:
    if not b64:
        return f"<p class=muted>({_e(alt)}: nothing to show)</p>"
    cap = f"<p class=muted>{caption}</p>" if caption else ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">{cap}'


def _cls(level: str) -> str:
    return "na" if level == "n/a" else level


def _badge(level: str) -> str:
    return f'<span class="badge {_cls(level)}">{LEVEL_TEXT.get(level, _e(level))}</span>'


def _verdict_box(v: Mapping[str, Any], title: str) -> str:
    return (f'<div class="verdict {_cls(v["level"])}"><b>{_e(title)} {LEVEL_TEXT.get(v["level"], "")}</b> — '
            f'{_e(v["reason"])}</div>')  # fmt: skip


def _notes(items: Sequence[str]) -> str:
    if not items:
        return ""
    return "<div class=notes><b>Notes</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in items) + "</ul></div>"
