"""`medsyn benchmark`: the classes / samples / resolution sweeps (`run_sweep`), the model comparison
(`run_compare`) and the privacy/utility curve (`--sweep epsilon`, `run_epsilon_sweep`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medsyn.benchmark import SweepConfig, run_sweep
from medsyn.benchmark.compare import CompareConfig, parse_models, run_compare
from medsyn.benchmark.epsilon import EpsilonConfig, parse_points, run_epsilon_sweep
from medsyn.cli.evaluate import _read_settings
from medsyn.cli.options import parse_duration
from medsyn.errors import ConfigError
from medsyn.evaluate.pipeline import EvalSettings, resolve_device
from medsyn.train import TrainConfig

console = Console()


def _f(v: float | None) -> str:
    """A stored number (JSON null where it was undefined)."""
    return "n/a" if v is None else f"{v:.3f}"


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark_cmd(
        data: str = typer.Option(..., "--data", help="Dataset spec or prepared cache folder."),
        sweep: str = typer.Option(None, "--sweep", help="classes | samples | resolution | epsilon."),
        compare: str = typer.Option(
            None,
            "--compare",
            help="Models trained with the same --budget each, e.g. cgan,ddpm or cgan:32,ddpm:16 (width).",
        ),
        n: int = typer.Option(
            None, "--n", help="--compare, --sweep epsilon: synthetic images per model (default: real training size)."
        ),
        settings: Path = typer.Option(None, "--settings", help="YAML overrides of the evaluation settings (sweeps read its classifier and utility sections)."),
        ddim_steps: int = typer.Option(
            None, "--ddim-steps", help="--compare, --sweep epsilon: DDIM steps of diffusion models."
        ),
        guidance: float = typer.Option(
            None, "--guidance", help="--compare, --sweep epsilon: guidance scale of diffusion models."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Sweep folder (rerun the same command to resume)."),
        points: str = typer.Option(
            None,
            help="Comma-separated points: numbers of classes, training images per class, image sizes in px, or "
            "target epsilons (inf = no DP, e.g. inf,10,3,1).",
        ),
        classes: str = typer.Option(None, help="Comma-separated classes to use (and their order for 'classes')."),
        config: Path = typer.Option(
            None,
            "--config",
            help="Sweeps: training YAML (e.g. medsyn tune's best.yaml) whose hyper-parameters every point trains with.",
        ),
        size: int = typer.Option(None, help="Image size in px (default: --config's, else 32)."),
        model: str = typer.Option(
            None, help="Sweeps: dcgan | cgan | acgan | stylegan2 | ddpm | ldm (default: --config's, else cgan)."
        ),
        augment: str = typer.Option(
            None, help="none | diffaugment | ada: discriminator augmentation (default: --config's, else none)."
        ),
        steps: int = typer.Option(None, help="Generator training steps per point (default: --config's, else 3000)."),
        budget: str = typer.Option(None, help="Generator training time per point, e.g. 300, 5m, 1.5h."),
        width: int = typer.Option(None, help="Generator width (default: --config's, else 32)."),
        batch: int = typer.Option(None, help="Training batch size (default: --config's, else 64)."),
        seed: int = typer.Option(0, help="Seed for training, generation and classifiers."),
        split_seed: int = typer.Option(0, "--split-seed", help="Seed of the patient split (made once)."),
        full: bool = typer.Option(False, "--full", help="DenseNet121 and 3 seeds instead of the quick small CNN."),
        device: str = typer.Option("auto", help="auto | cpu | cuda."),
        dp_delta: float = typer.Option(None, "--dp-delta", help="--sweep epsilon: DP delta (default 0.1 / training images)."),
        dp_max_grad_norm: float = typer.Option(
            None, "--dp-max-grad-norm", help="--sweep epsilon: per-sample gradient clipping norm C (default 1.0)."
        ),
        dp_unit: str = typer.Option(
            None, "--dp-unit", help="--sweep epsilon: what DP protects, image (default) or patient."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Sweeps: a generator per point, TRTR vs TSTR on the same real test patients -> CSV, PNG, report.
        --compare: each model trained for --budget on the same split, generated and evaluated -> one table.
        --sweep epsilon: one generator per target epsilon, --steps each, evaluated as --compare -> the privacy/utility curve."""
        if (sweep is None) == (compare is None):
            raise ConfigError("give either --sweep classes|samples|resolution|epsilon or --compare MODEL,MODEL")
        dev = resolve_device(device)
        dp = {"dp_delta": dp_delta, "dp_max_grad_norm": dp_max_grad_norm, "dp_unit": dp_unit}
        if sweep != "epsilon" and any(v is not None for v in dp.values()):
            raise ConfigError("--dp-delta, --dp-max-grad-norm and --dp-unit apply to --sweep epsilon")
        if sweep == "epsilon":
            _refuse("--sweep epsilon (every point trains --model with its defaults and the network DP needs)",
                    {"--config": config, "--classes": classes, "--augment": augment})
            if steps is None:
                raise ConfigError("--sweep epsilon needs --steps: DP-SGD calibrates its noise to the planned steps, so "
                                  "every point trains the same number (--budget is only a safety time limit)")  # fmt: skip
            ecfg = EpsilonConfig(
                data=data, points=parse_points(points or "inf,10,3,1"), steps=steps, model=model or "cgan",
                size=size or 32, width=width or 32, batch=batch or 64, seed=seed, device=dev, n=n,
                budget_s=parse_duration(budget, "--budget") if budget else None, ddim_steps=ddim_steps,
                guidance=guidance, quick=not full, settings=_read_settings(settings), **dp,
            )  # fmt: skip
            run_epsilon_sweep(ecfg, out, quiet=quiet)
            console.print((out / "epsilon.md").read_text())
            console.print(f"results: {out / 'results.csv'}  figure: {out / 'epsilon.png'}  report: {out / 'epsilon.html'}")
            return
        if compare is not None:
            _refuse("--compare (each model trains with its defaults for --budget on all of --data's classes; for a "
                    "subset of classes, give a cache from `medsyn data prepare --classes` as --data)",
                    {"--config": config, "--classes": classes, "--augment": augment, "--points": points,
                     "--model": model, "--steps": steps})  # fmt: skip
            if budget is None:
                raise ConfigError("--compare needs --budget: the training wall time every model gets, e.g. 10m")
            models, widths = parse_models(compare)
            ccfg = CompareConfig(
                data=data, models=models, widths=widths, budget_s=parse_duration(budget, "--budget"), size=size or 32,
                width=width or 32, batch=batch or 64, seed=seed, device=dev, ddim_steps=ddim_steps, guidance=guidance,
                quick=not full, settings=_read_settings(settings), n=n,
            )  # fmt: skip
            run_compare(ccfg, out, quiet=quiet)
            console.print((out / "compare.md").read_text())
            console.print(f"results: {out / 'results.json'}  table: {out / 'compare.md'}")
            return
        utility = EvalSettings.make(not full, seed, dev, not quiet, _read_settings(settings)).utility
        cfg = SweepConfig(
            data=data, sweep=sweep, points=_ints(points, "--points"),
            classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None, size=size,
            model=model, augment=augment, steps=steps, budget_s=parse_duration(budget, "--budget") if budget else None, width=width,
            batch=batch, seed=seed, split_seed=split_seed, device=dev, utility=utility,
            train_config=TrainConfig.from_yaml(config).to_dict() if config is not None else None,
        )  # fmt: skip
        summary = run_sweep(cfg, out, quiet=quiet)
        for p in summary["points"]:
            u, r = p["utility"], p["utility"]["ratio"]["tstr_over_trtr"]
            console.print(
                f"{sweep} {p['point']:>6}: TRTR {_f(u['trtr']['mean_auroc'])}  TSTR {_f(u['tstr']['mean_auroc'])}  "
                f"ratio {_f(r['value'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
            )
        console.print(f"results: {out / 'results.csv'}  figure: {out / 'sweep.png'}  report: {out / 'report.html'}")


def _refuse(mode: str, options: dict[str, object]) -> None:
    """A clear error for options given that `mode` does not read, instead of silently ignoring them."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {mode}")
