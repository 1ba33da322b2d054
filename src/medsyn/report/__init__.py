"""The evaluation report: one self-contained HTML page (figures embedded); the verdicts come from `medsyn.evaluate.verdicts`.

    write_report(metrics, assets, "eval/report.html")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from medsyn.io import write_text_atomic
from medsyn.report.assets import ReportAssets
from medsyn.report.html import render


def write_report(metrics: Mapping[str, Any], assets: ReportAssets, path: str | os.PathLike[str]) -> None:
    """Draw the figures and write the page atomically."""
    write_text_atomic(path, render(metrics, assets.figures(metrics), assets.real_images))


__all__ = ["ReportAssets", "write_report"]
