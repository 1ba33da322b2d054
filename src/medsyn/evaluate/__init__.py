"""Evaluation of a synthetic set: Useful? Realistic? Private? (`evaluate`; docs/ARCHITECTURE.md for the map).

`from medsyn.evaluate import evaluate` loads the whole pipeline on first use only, so that importing one
metric module (e.g. `medsyn.evaluate.neighbors` in `generate --privacy-filter`) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from medsyn.evaluate.pipeline import evaluate

        return evaluate
    raise AttributeError(f"module 'medsyn.evaluate' has no attribute {name!r}")
