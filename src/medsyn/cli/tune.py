"""`medsyn tune`: a thin wrapper over `medsyn.tune.run_tune`."""

from __future__ import annotations

from pathlib import Path

import typer

from medsyn.cli.options import parse_duration
from medsyn.train import TrainConfig


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        data: str = typer.Argument(..., help="Dataset spec or prepared cache folder (needs a validation split)."),
        out: Path = typer.Option(..., "--out", "-o", help="Study folder (rerun the same command to continue)."),
        model: str = typer.Option(None, help="dcgan | cgan | acgan | stylegan2 | ddpm | ldm (default: --config's, or cgan)."),
        trials: int = typer.Option(20, help="Trials in the study (finished ones count on a rerun)."),
        budget: str = typer.Option(None, help="Generator training time per trial, e.g. 90s, 10m."),
        steps: int = typer.Option(None, help="Generator steps per trial (with --budget: whichever ends first)."),
        size: int = typer.Option(None, help="Image size in px (default: --config's, the cache's, or 64)."),
        config: Path = typer.Option(None, "--config", help="Training YAML to start from (trial 0 is this config)."),
        n: int = typer.Option(None, "--n", help="Synthetic images per score (default: real training size, <= 2000)."),
        reports: int = typer.Option(3, help="Scored stages per trial; the median pruner stops trials between them."),
        privacy_penalty: float = typer.Option(
            0.0, "--privacy-penalty", help="Subtract this from a trial whose pixel DCR check fails (e.g. 0.1)."
        ),
        seed: int = typer.Option(0, help="Seed of the sampler, the training runs and the classifiers."),
        device: str = typer.Option("auto", help="auto | cpu | cuda."),
        quiet: bool = typer.Option(False, "--quiet", help="No line per trial."),
    ) -> None:
        """Search a model's hyper-parameters (Optuna TPE, median pruning) for the best validation TSTR AUROC;
        writes OUT/study.db, trials.csv, best.yaml (medsyn train --config) and tune.html. The test split is
        never read."""
        from medsyn.tune import TuneConfig, run_tune  # optuna and sqlalchemy load only for this command

        base = TrainConfig.from_yaml(config).to_dict() if config is not None else None
        cfg = TuneConfig(
            data=data, model=model, trials=trials, budget_s=parse_duration(budget, "--budget") if budget else None,
            steps=steps, size=size, seed=seed, base=base, n=n, reports=reports, privacy_penalty=privacy_penalty,
            device=device,
        )  # fmt: skip
        run_tune(cfg, out, quiet=quiet)
