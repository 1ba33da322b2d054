"""The main job end to end: prepare -> train a conditional GAN -> generate a set with the training set's size
and label distribution (what TSTR compares) -> evaluate.

Defaults are sized for a 2-core CPU (a few minutes on the built-in phantom); `data` runs the same
pipeline on a user's dataset. Each stage is resumable: a rerun reuses the cache, continues training
from its checkpoint and regenerates only what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsyn.evaluate.pipeline import evaluate
from medsyn.generate import generate, is_current
from medsyn.train import TrainConfig, train


def run_demo(
    out: str | Path = "medsyn-demo",
    data: str = "phantom?n=4000",
    size: int = 32,
    model: str = "cgan",
    steps: int = 5000,
    width: int = 32,
    quick: bool = True,
    seed: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline into `out` (run/, synthetic/, evaluation/); returns the evaluation metrics."""
    out = Path(out)
    run_dir = out / "run"
    cfg = TrainConfig(
        data=data, model=model, size=size, steps=steps, width=width, seed=seed, device=device,
        cache=str(out / "cache"), sample_every=max(1, steps // 5), ckpt_every=max(1, steps // 10),
    )  # fmt: skip
    # A rerun continues the same run (or finds it finished); a longer --steps extends it, and any other
    # change of settings is refused by the trainer with a one-line error.
    train(cfg, run_dir, resume=(run_dir / "run.json").is_file(), quiet=quiet)
    synthetic = out / "synthetic"
    if not is_current(synthetic, run_dir):  # missing, or drawn before the run was trained further
        generate(run_dir, None, synthetic, seed=seed, device=device, quiet=quiet)  # the training size and labels
    return evaluate(
        data, synthetic, out / "evaluation", quick=quick, seed=seed, device=device, cache=out / "cache", quiet=quiet
    )
