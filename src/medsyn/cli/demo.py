"""`medsyn demo`: the whole pipeline on the built-in phantom (or `--data SPEC`), with a closing summary."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medsyn.cli.evaluate import print_summary
from medsyn.demo import run_demo


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("medsyn-demo"), "--out", help="Folder for cache, run, synthetic set, report."),
        data: str = typer.Option("phantom?n=4000", "--data", help="Dataset spec (default: the built-in phantom)."),
        size: int = typer.Option(32, help="Image size in px."),
        model: str = typer.Option("cgan", help="dcgan | cgan | acgan | stylegan2."),
        steps: int = typer.Option(5000, help="Training steps."),
        width: int = typer.Option(32, help="Model width."),
        full: bool = typer.Option(
            False, "--full", help="Full evaluation (DenseNet121, several seeds) instead of --quick."
        ),
        seed: int = typer.Option(0, help="Seed for training, generation and evaluation."),
        device: str = typer.Option("auto", help="auto | cpu | cuda."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """prepare -> train -> generate a synthetic set like the training set -> evaluate -> report.html."""
        start = time.perf_counter()
        metrics = run_demo(out, data, size, model, steps, width, not full, seed, device, quiet)
        print_summary(metrics, out / "evaluation", f"medsyn demo ({time.perf_counter() - start:.0f} s)")
