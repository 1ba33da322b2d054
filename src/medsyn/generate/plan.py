"""Which label vector each synthetic image gets, decided before any image is drawn.

Three recipes: the training label distribution (multi-hot combinations in their exact training
proportions, the default),
K images per label group (`per_class`), or topping every group up to the largest group's count
(`balance`, the class-balancing augmentation recipe; on groups that are already balanced, nothing needs
topping up, so it writes the largest count per group: a balanced set the size of the training set).
Groups are the classes plus the negative group (e.g. 'No Finding', 'normal') where the data has images
without any positive label. A group without training images is never drawn: its generator never saw one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsyn.errors import ConfigError


@dataclass
class Plan:
    """labels: (n, K) uint8 label vectors; generator: (n,) which generator draws each image; notes: what the
    user should know about the plan (groups left out, a balanced set redrawn), one line each."""

    labels: np.ndarray
    generator: np.ndarray
    mode: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, classes: list[str], no_finding: str | None) -> dict[str, int]:
        """Images per class (positives; multi-hot images count for each of their classes)."""
        out = {c: int(self.labels[:, i].sum()) for i, c in enumerate(classes)}
        if no_finding:
            out[no_finding] = int((self.labels.sum(axis=1) == 0).sum())
        return out


def make_plan(meta: dict[str, Any], n: int | None, per_class: int | None, balance: bool, seed: int) -> Plan:
    """The label plan for a run description (run.json); at most one of n, per_class, balance is used (none:
    as many images as the generator's training set, with its label distribution: the set TSTR compares)."""
    chosen = [name for name, v in (("--n", n), ("--per-class", per_class), ("--balance", balance or None))
              if v is not None]  # fmt: skip
    if len(chosen) > 1:
        raise ConfigError(f"choose one of --n, --per-class, --balance (got {', '.join(chosen)})")
    if not chosen:
        n = (meta.get("labels") or {}).get("train_images")
        if n is None:
            raise ConfigError("give --n, --per-class or --balance: this generator does not record its training size")
    for name, value in (("--n", n), ("--per-class", per_class)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be a positive number of images, got {value}")
    groups = meta["groups"]
    conditional = bool(meta["conditional"])
    labels = np.array([g["label"] for g in groups], dtype=np.uint8).reshape(len(groups), -1)
    counts = np.array([g["count"] for g in groups])
    seen = np.flatnonzero(counts > 0)
    notes = []
    if per_class is not None or balance:
        unseen = [g["name"] for g in groups if g["count"] == 0]
        if unseen:
            it = "it" if len(unseen) == 1 else "them"
            notes.append(f"not generating {', '.join(unseen)}: the generator saw no training images of {it}")
    if per_class is not None:
        pick = np.repeat(seen, per_class)
        mode = "per_class"
    elif balance:
        largest = int(counts.max())
        top_up = largest - counts[seen]
        if not top_up.any():
            notes.append(
                f"--balance: the label groups are already balanced ({largest} training images each); writing "
                f"{largest} per group, a balanced set the size of the training set"
            )
            top_up = np.full(len(seen), largest)
        pick = np.repeat(seen, top_up)
        mode = "balance"
    else:
        assert n is not None
        mode = "distribution"
        if conditional:  # whole multi-hot combinations in their training proportions, in a seeded order
            rng = np.random.default_rng(seed)
            combos = meta["labels"]["combos"]
            vectors = np.array([c["label"] for c in combos], dtype=np.uint8).reshape(len(combos), -1)
            drawn = rng.permutation(np.repeat(np.arange(len(combos)), _apportion([c["count"] for c in combos], n)))
            return Plan(vectors[drawn], np.zeros(n, dtype=np.int64), mode)
        pick = np.repeat(np.arange(len(groups)), _apportion([g["count"] for g in groups], n))
    generator = np.zeros(len(pick), dtype=np.int64) if conditional else pick
    return Plan(labels[pick], generator, mode, notes)


def _apportion(counts: list[int], n: int) -> np.ndarray:
    """`n` split in proportion to `counts` (largest remainder, ties to the earlier entry): a synthetic set of
    the training set's size has exactly its composition, without the noise of a multinomial draw."""
    w = np.asarray(counts, dtype=np.float64)
    exact = n * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: n - int(out.sum())]] += 1
    return out
