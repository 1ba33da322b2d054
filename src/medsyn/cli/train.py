"""`medsyn train`, `medsyn generate` and `medsyn export`: thin wrappers over the package API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from medsyn.cli.options import parse_duration
from medsyn.errors import ConfigError
from medsyn.generate import PrivacyFilter, export, generate
from medsyn.generate.privacy_filter import summary_line
from medsyn.train import TrainConfig, train
from medsyn.train.run import read_run_meta
from medsyn.train.trainer import progress_line

console = Console()


def _base_config(spec: str | None, config: Path | None, out: Path, resume: bool) -> dict[str, Any]:
    """Settings before command-line overrides: --config FILE, else the run's own config when resuming."""
    if config is not None:
        base = TrainConfig.from_yaml(config, data=spec).to_dict()
    elif resume and spec is None:
        base = read_run_meta(out)["config"]
    else:
        base = {}
    if spec is not None:
        base["data"] = spec
    if not base.get("data"):
        raise ConfigError("give a dataset SPEC (e.g. nih:/data/cxr14 or phantom), --config FILE, or --resume")
    return base


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        spec: str = typer.Argument(
            None,
            help="Dataset spec (nih:/data/cxr14, medmnist:f.npz, phantom?n=2000) or a prepared cache folder.",
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, samples, losses)."),
        model: str = typer.Option(
            None, help="dcgan | cgan | acgan | stylegan2 | ddpm | ldm | twostage (default cgan)."
        ),
        size: int = typer.Option(None, help="Image size in px (default 64)."),
        steps: int = typer.Option(None, help="Generator steps (per class for dcgan; default 10000)."),
        batch: int = typer.Option(None, help="Images per step and process (default 64)."),
        width: int = typer.Option(None, help="Model width (feature channels at full resolution; default 64)."),
        loss: str = typer.Option(None, help="ns | hinge | wgan-gp (default: the model's)."),
        lr_g: float = typer.Option(None, "--lr-g", help="Generator learning rate (default: the model's)."),
        lr_d: float = typer.Option(None, "--lr-d", help="Discriminator learning rate (default: the model's)."),
        r1_gamma: float = typer.Option(None, "--r1-gamma", help="R1 weight (default: the model's; 0 = off)."),
        ema_decay: float = typer.Option(None, "--ema-decay", help="EMA decay of the generator (default 0.999)."),
        augment: str = typer.Option(None, help="none | diffaugment | ada (default none)."),
        precision: str = typer.Option(
            None, help="auto | fp32 | bf16 | fp16 (default auto: bf16 on GPUs; on CPU the faster of fp32/bf16, timed)."
        ),
        channels_last: bool = typer.Option(
            None, "--channels-last/--no-channels-last", help="Memory format (default: on with bf16/fp16)."
        ),
        device: str = typer.Option(None, help="auto | cpu | cuda (default auto)."),
        seed: int = typer.Option(None, help="Training seed (default 0)."),
        classes: str = typer.Option(None, help="Comma-separated subset of the data's classes."),
        cache: Path = typer.Option(None, help="Where a spec is prepared (default: RUN/../.medsyn-cache)."),
        sample_every: int = typer.Option(None, "--sample-every", help="Steps between sample grids."),
        ckpt_every: int = typer.Option(None, "--ckpt-every", help="Steps between checkpoints."),
        log_every: int = typer.Option(None, "--log-every", help="Steps between losses.csv rows."),
        workers: int = typer.Option(None, help="DataLoader workers (default: 0 on CPU, 4 per GPU)."),
        config: Path = typer.Option(None, "--config", help="YAML config (e.g. RUN/config.yaml); options override it."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
        time_limit: str = typer.Option(
            None,
            "--time-limit",
            help="Stop (with a checkpoint) after this much training time, e.g. 90m, 2h; kept by --resume.",
        ),
        dp_epsilon: float = typer.Option(
            None, "--dp-epsilon", help="Train with DP-SGD (Opacus) to this epsilon (cgan, acgan, ddpm, twostage; one process)."
        ),
        dp_delta: float = typer.Option(None, "--dp-delta", help="DP delta (default 0.1 / training images)."),
        dp_max_grad_norm: float = typer.Option(
            None, "--dp-max-grad-norm", help="DP per-sample gradient clipping norm C (default 1.0)."
        ),
        dp_unit: str = typer.Option(
            None, "--dp-unit", help="What DP protects: image (default) or patient (all of a patient's images)."
        ),
        stage: str = typer.Option(
            None, "--stage", help="twostage: both (default) | masks (Stage I alone) | images (Stage II alone)."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Train a GAN or diffusion model; under torchrun it trains data-parallel on every process (rank 0 writes);
        with --dp-epsilon, differentially private (the networks that read real images: DP-SGD)."""
        base = _base_config(spec, config, out, resume)
        given = {
            "model": model, "size": size, "steps": steps, "batch": batch, "width": width, "loss": loss,
            "lr_g": lr_g, "lr_d": lr_d, "r1_gamma": r1_gamma, "ema_decay": ema_decay, "augment": augment,
            "precision": precision, "channels_last": channels_last, "device": device, "seed": seed,
            "classes": [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None,
            "cache": str(cache) if cache is not None else None, "sample_every": sample_every,
            "ckpt_every": ckpt_every, "log_every": log_every, "workers": workers,
            "time_limit_s": parse_duration(time_limit, "--time-limit") if time_limit else None,
            "dp_epsilon": dp_epsilon, "dp_delta": dp_delta, "dp_max_grad_norm": dp_max_grad_norm,
            "dp_unit": dp_unit, "stage": stage,
        }  # fmt: skip
        base.update({k: v for k, v in given.items() if v is not None})
        run = train(TrainConfig.from_dict(base), out, resume=resume, quiet=quiet)
        prog = read_run_meta(run).get("progress")
        if prog is not None:
            console.print(
                progress_line(prog), style=None if prog["stop_reason"] == "completed" else "yellow", soft_wrap=True
            )
        console.print(f"run folder: {run}")

    @app.command("generate")
    def generate_cmd(
        run: Path = typer.Argument(..., help="Run folder, or a folder written by 'medsyn export'."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the synthetic set."),
        n: int = typer.Option(
            None, "--n", help="Images, with the training label distribution (default: the training set's size)."
        ),
        per_class: int = typer.Option(
            None, "--per-class", help="Images per class (and for the negative group, e.g. 'No Finding' or 'normal')."
        ),
        balance: bool = typer.Option(
            False,
            "--balance",
            help="Every label group at the largest group's training count (a balanced set gets that count each).",
        ),
        seed: int = typer.Option(0, help="Sampling seed."),
        batch: int = typer.Option(256, help="Images per generator call."),
        device: str = typer.Option("auto", help="auto | cpu | cuda."),
        precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        ddim_steps: int = typer.Option(
            None, "--ddim-steps", help="Diffusion models: DDIM sampling steps (default: the model's, 20)."
        ),
        guidance: float = typer.Option(
            None, "--guidance", help="Diffusion models: classifier-free guidance scale (default 2; 1 = none)."
        ),
        privacy_filter: bool = typer.Option(
            False, "--privacy-filter", help="Re-draw candidates too close to a training image (pixels, re-id)."
        ),
        filter_percentile: float = typer.Option(
            None, "--filter-percentile", help="Reject below this percentile of held-out distances (default 1)."
        ),
        reid_model: Path = typer.Option(None, "--reid-model", help="Re-id model folder: also reject linked images."),
        reid_fpr: float = typer.Option(None, "--reid-fpr", help="Held-out false-link rate of the re-id check (0.01)."),
        max_rejection: float = typer.Option(
            None, "--max-rejection", help="Fail (memorising) above this rejected fraction (0.5)."
        ),
        real: str = typer.Option(
            None, "--real", help="Training data spec or cache, when the run's own cache is not available."
        ),
        masks: Path = typer.Option(
            None, "--masks", help="twostage: paint one image for each mask file in this folder (real masks in)."
        ),
    ) -> None:
        """Write PNGs, labels in the source dataset's format and manifest.json (EMA generator)."""
        given = {"percentile": filter_percentile, "reid_model": reid_model, "reid_fpr": reid_fpr,
                 "max_rejection": max_rejection, "real": real}  # fmt: skip
        options = {k: v for k, v in given.items() if v is not None}
        if options and not privacy_filter:
            raise ConfigError(
                "--filter-percentile, --reid-model, --reid-fpr, --max-rejection and --real need --privacy-filter"
            )
        filt = PrivacyFilter(**options) if privacy_filter else None
        folder = generate(run, n, out, per_class=per_class, balance=balance, seed=seed, batch=batch,
                          device=device, precision=precision, quiet=quiet, privacy_filter=filt,
                          ddim_steps=ddim_steps, guidance=guidance, masks=masks)  # fmt: skip
        if filt is not None:
            console.print(summary_line(json.loads((folder / "manifest.json").read_text())["privacy_filter"]))
        console.print(f"synthetic set: {folder}")

    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(..., help="Run folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for generator.safetensors + generator.json."),
    ) -> None:
        """Export the EMA generator(s) as safetensors + JSON, loadable without pickle."""
        console.print(f"exported generator: {export(run, out)}")
