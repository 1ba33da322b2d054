"""Helpers shared by the training tests: a tiny run config, a kill at a given step, a fake 1 s-per-step clock,
Opacus' own epsilon for a DP-SGD run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from medsyn.train import TrainConfig, Trainer, train


def tiny(cache: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(cache), model="cgan", size=16, steps=4, batch=8, width=8, ckpt_every=2, log_every=1,
                sample_every=100, device="cpu", precision="fp32")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def kill_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th training step (counted from now) raise KeyboardInterrupt, as a kill would stop the run;
    `monkeypatch.undo()` or a new patch of `Trainer.train_step` restores it."""
    calls = {"n": 0}
    step = Trainer.train_step

    def killed(self: Trainer, *a: object) -> dict:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return step(self, *a)

    monkeypatch.setattr(Trainer, "train_step", killed)


def one_second_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake training clock that advances 1 s per step."""
    clock = {"t": 0.0}
    step = Trainer.train_step

    def timed(self: Trainer, *a: object) -> dict:
        clock["t"] += 1.0
        return step(self, *a)

    monkeypatch.setattr("medsyn.train.loop.time.perf_counter", lambda: clock["t"])
    monkeypatch.setattr(Trainer, "train_step", timed)


def opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Opacus' RDP accountant stepped as its DPOptimizer would step it."""
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def whole_and_resumed(cfg: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> tuple[Path, Path]:
    """The run of `cfg` uninterrupted, and the same run killed at step `kill_at` then resumed (to compare)."""
    whole = train(cfg, tmp_path / "whole", quiet=True)
    kill_at_step(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", quiet=True)
    monkeypatch.undo()
    return whole, train(None, tmp_path / "killed", resume=True, quiet=True)
