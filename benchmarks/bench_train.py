#!/usr/bin/env python3
"""Training and generation throughput of medsyn against the textbook DCGAN loop, in the same process.

Training: medsyn `dcgan` (64 px, batch 64, width 64 = the textbook's ngf/ndf) through the real training step
(data from the memory-mapped cache, EMA, loss bookkeeping) vs the `step()` of
/work/shared/bench/textbook_dcgan.py (a fixed random batch, no data loading), as median step times after
warm-up, calling the four variants in turn so that all see the same load on a shared CPU.
Generation: images/s of the EMA generator at batch 256, drawing only and end to end (PNGs, labels, manifest).

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--textbook PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medsyn.data.cache import prepare
from medsyn.generate import generate
from medsyn.generate.core import _draw, generator_files
from medsyn.generate.plan import make_plan
from medsyn.train import TrainConfig, Trainer, train
from medsyn.train.data import open_train_data
from medsyn.train.distributed import DistInfo
from medsyn.train.trainer import resolve_runtime

TEXTBOOK = Path("/work/shared/bench/textbook_dcgan.py")


def textbook_step(path: Path, bf16_cl: bool) -> Callable[[], None]:
    """The textbook script's own `step()` (its models, optimisers and batch), after running it once."""
    argv = [str(path), "--size", "64", "--batch", "64", "--steps", "1", "--warmup", "0"]
    argv += ["--bf16", "--channels-last"] if bf16_cl else []
    saved, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return runpy.run_path(str(path), run_name="__main__")["step"]
    finally:
        sys.argv = saved


def medsyn_step(cache: Path, work: Path, precision: str, channels_last: bool) -> Callable[[], None]:
    """One medsyn training step for dcgan at 64 px, batch 64: batch from the cache, D and G updates, EMA."""
    cfg = TrainConfig(data=str(cache), model="dcgan", size=64, batch=64, width=64, steps=10_000,
                      precision=precision, channels_last=channels_last, device="cpu").resolved()  # fmt: skip
    info = DistInfo()
    data = open_train_data(cfg, work, info, quiet=True)
    group = data.groups(per_class=True)[0]
    trainer = Trainer(cfg, data, [group], 0, work / f"{precision}-{channels_last}", resolve_runtime(cfg, info), info)
    batches = trainer._batches()

    def step() -> None:
        real, labels = next(batches)
        trainer._accumulate(trainer.train_step(real, labels))
        trainer.step += 1

    return step


def interleaved(steps: dict[str, Callable[[], None]], n: int, warmup: int = 3) -> dict[str, float]:
    """Median img/s of each step function, called in turn so that all see the same load on a shared CPU."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + n):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: 64 / statistics.median(v) for k, v in times.items()}


def generation(run: Path, work: Path, precision: str) -> tuple[float, float]:
    """(draw-only, end-to-end) img/s of the run's EMA generator at batch 256."""
    meta, files = generator_files(run)
    G = files[0].load()
    plan = make_plan(meta, None, 256, False, 0)
    amp = torch.bfloat16 if precision == "bf16" else None
    chunk = np.flatnonzero(plan.generator == 0)[:256]
    _draw(G, plan, chunk, 0, torch.device("cpu"), amp)  # warm-up
    times = []
    for s in range(5):
        t = time.perf_counter()
        _draw(G, plan, chunk, s, torch.device("cpu"), amp)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    generate(run, 1024, work / f"synthetic-{precision}", precision=precision, device="cpu", quiet=True)
    return 256 / statistics.median(times), 1024 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--textbook", type=Path, default=TEXTBOOK)
    a = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = prepare("phantom?n=600&seed=0", 64, work / "cache", quiet=True).path
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU shared with other jobs")
        rates = interleaved({
            "textbook fp32": textbook_step(a.textbook, False),
            "medsyn fp32": medsyn_step(cache, work, "fp32", False),
            "textbook bf16+CL": textbook_step(a.textbook, True),
            "medsyn bf16+CL": medsyn_step(cache, work, "bf16", True),
        }, a.steps)  # fmt: skip
        torch.set_num_threads(2)  # the textbook script sets its own thread count; keep the comparison at 2
        for label in ("fp32", "bf16+CL"):
            ms, tb = rates[f"medsyn {label}"], rates[f"textbook {label}"]
            print(
                f"train 64px batch 64 {label:<8} medsyn {ms:6.1f} img/s   textbook {tb:6.1f} img/s   ratio {ms / tb:.2f}"
            )
        run = work / "run"
        train(TrainConfig(data=str(cache), model="dcgan", size=64, steps=1, batch=8, width=64, device="cpu",
                          precision="fp32", classes=["Cardiomegaly"]), run, quiet=True)  # fmt: skip
        for precision in ("fp32", "bf16"):
            draw, e2e = generation(run, work, precision)
            print(f"generate 64px batch 256 {precision}: {draw:7.1f} img/s drawing, {e2e:7.1f} img/s to PNGs")


if __name__ == "__main__":
    main()
