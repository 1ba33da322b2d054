"""`medsyn evaluate`: utility, fidelity and privacy of a synthetic set in one report (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from medsyn.errors import ConfigError
from medsyn.evaluate.pipeline import evaluate
from medsyn.report.html import training_text
from medsyn.report.summary import summary_rows

console = Console()
STYLE = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red", "n/a": "dim"}
TEXT = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "n/a": "NOT ASSESSED"}


def _read_settings(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the settings file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the settings file must hold a mapping, got {type(data).__name__}")
    return data


def print_summary(metrics: dict[str, Any], out: Path, title: str) -> None:
    """The closing table: one row per question (useful, realistic, private) with its verdict."""
    table = Table(title=title, show_lines=False)
    table.add_column("question")
    table.add_column("verdict")
    table.add_column("key numbers")
    for question, level, numbers in summary_rows(metrics):
        table.add_row(question, f"[{STYLE[level]}]{TEXT[level]}[/]", numbers)
    console.print(table)
    console.print(f"generator training: {training_text(metrics['data']['synthetic'].get('training'))}")
    warning = metrics.get("fidelity", {}).get("warning")
    if warning:
        console.print(f"[bold red]warning:[/] {warning}")
    console.print(f"report: {metrics['report']}")
    console.print(f"metrics: {out / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        real: str = typer.Option(
            ...,
            "--real",
            help="Real data: a dataset spec (nih:/data/cxr14, phantom?n=2000) or a prepared cache folder.",
        ),
        synthetic: str = typer.Option(
            ...,
            "--synthetic",
            help="Synthetic set: a 'medsyn generate' folder, a folder with labels.csv, or a spec (folder:DIR, csv:FILE).",
        ),  # fmt: skip
        out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json and report.html."),
        quick: bool = typer.Option(False, "--quick", help="Small classifier, few epochs: minutes on a CPU."),
        seed: int = typer.Option(0, help="Seed of every classifier, bootstrap and subsample."),
        device: str = typer.Option("auto", help="auto | cpu | cuda."),
        features: Path = typer.Option(
            None,
            "--features",
            help="Local TorchXRayVision DenseNet121 or pytorch-fid Inception-v3 weights for fidelity features "
            "(default: a classifier trained on the real training split).",
        ),  # fmt: skip
        size: int = typer.Option(None, help="Image size in px when --real is a spec (default: the generator's)."),
        classes: str = typer.Option(None, help="Comma-separated subset of the real classes to evaluate."),
        cache: Path = typer.Option(None, help="Where a --real spec is prepared (default: OUT/../.medsyn-cache)."),
        no_real_images: bool = typer.Option(
            False, "--no-real-images", help="Leave real images out of the report, so it can be shared on its own."
        ),
        settings: Path = typer.Option(
            None,
            "--settings",
            help="YAML overrides of the evaluation settings, e.g. {classifier: {epochs: 10}, reid: {epochs: 5}}.",
        ),  # fmt: skip
        reader_study: Path = typer.Option(
            None, "--reader-study", help="A 'medsyn reader-study' file: its analysis becomes a section of the report."
        ),
        run: Path = typer.Option(
            None, "--run", help="The generator's training run folder: adds the membership attack that reads the "
            "trained model (discriminator score, or denoising loss for diffusion models).",
        ),  # fmt: skip
        quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    ) -> None:
        """Is the synthetic set useful, realistic and private? Writes OUT/metrics.json and OUT/report.html."""
        metrics = evaluate(
            real, synthetic, out, quick=quick, seed=seed, device=device, feature_weights=features, size=size,
            classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None, cache=cache,
            real_images=not no_real_images, settings=_read_settings(settings), quiet=quiet, reader_study=reader_study,
            run=run,
        )  # fmt: skip
        print_summary(metrics, out, "medsyn evaluate")
