"""Which label vector each synthetic image gets, decided before any image is drawn.

Three recipes: the training label distribution (multi-hot combinations as they occur, the default),
K images per label group (`per_class`), or topping every group up to the largest group's count
(`balance`, the class-balancing augmentation recipe). Groups are the classes plus 'No Finding' where
the data has images without any positive label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medsyn.errors import ConfigError


@dataclass
class Plan:
    """labels: (n, K) uint8 label vectors; generator: (n,) which generator draws each image."""

    labels: np.ndarray
    generator: np.ndarray
    mode: str

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, classes: list[str], no_finding: str | None) -> dict[str, int]:
        """Images per class (positives; multi-hot images count for each of their classes)."""
        out = {c: int(self.labels[:, i].sum()) for i, c in enumerate(classes)}
        if no_finding:
            out[no_finding] = int((self.labels.sum(axis=1) == 0).sum())
        return out


def make_plan(meta: dict[str, Any], n: int | None, per_class: int | None, balance: bool, seed: int) -> Plan:
    """The label plan for a run description (run.json); exactly one of n, per_class, balance is used."""
    chosen = [name for name, v in (("--n", n), ("--per-class", per_class), ("--balance", balance or None))
              if v is not None]  # fmt: skip
    if len(chosen) != 1:
        raise ConfigError(f"choose exactly one of --n, --per-class, --balance (got {', '.join(chosen) or 'none'})")
    for name, value in (("--n", n), ("--per-class", per_class)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be a positive number of images, got {value}")
    groups = meta["groups"]
    conditional = bool(meta["conditional"])
    labels = np.array([g["label"] for g in groups], dtype=np.uint8).reshape(len(groups), -1)
    if per_class is not None:
        pick = np.repeat(np.arange(len(groups)), per_class)
        mode = "per_class"
    elif balance:
        counts = np.array([g["count"] for g in groups])
        pick = np.repeat(np.arange(len(groups)), counts.max() - counts)
        mode = "balance"
        if len(pick) == 0:
            raise ConfigError("--balance: the label groups are already balanced; nothing to generate")
    else:
        assert n is not None
        rng = np.random.default_rng(seed)
        mode = "distribution"
        if conditional:  # draw whole multi-hot combinations with their training frequency
            combos = meta["labels"]["combos"]
            weights = np.array([c["count"] for c in combos], dtype=np.float64)
            drawn = rng.choice(len(combos), size=n, p=weights / weights.sum())
            vectors = np.array([c["label"] for c in combos], dtype=np.uint8).reshape(len(combos), -1)
            return Plan(vectors[drawn], np.zeros(n, dtype=np.int64), mode)
        weights = np.array([g["count"] for g in groups], dtype=np.float64)
        pick = np.sort(rng.choice(len(groups), size=n, p=weights / weights.sum()), kind="stable")
    generator = np.zeros(len(pick), dtype=np.int64) if conditional else pick
    return Plan(labels[pick], generator, mode)
