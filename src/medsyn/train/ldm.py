"""`--model ldm` in one command: the autoencoder stage, then the latent denoiser, each a `Trainer` of its own.

    RUN/autoencoder/{checkpoints,samples,losses.csv,losses.png}   stage 1 (samples: real rows and their
                                                                   reconstructions)
    RUN/{checkpoints,samples,losses.csv,losses.png}               stage 2, the generator `generate` reads

Each stage checkpoints and resumes exactly like any run (loop.py). A resumed run continues the stage it was
killed in; once the denoiser has started, the autoencoder is never trained again (the denoiser's latents
would no longer match), even if a resume raises `--steps` or `--time-limit`.

Budget: the autoencoder trains (at `ae_lr`) `ae_steps` steps (default `steps * ae_share / (1 - ae_share)`) or until it has
used `ae_share` of `--time-limit` (default 0.25); the denoiser then trains `steps` steps or until the whole
limit is spent: its clock starts at the autoencoder's time, so a stage that finishes early leaves its time to
the denoiser, and the denoiser's checkpoint counts the run's whole training time (what `generate` reports).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsyn.data.cache import to_signed
from medsyn.models import GANConfig
from medsyn.models.ldm import LatentDiffusionGenerator, ldm_options
from medsyn.train.autoencoder import AutoencoderObjective
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.config import TrainConfig
from medsyn.train.data import Group, TrainData
from medsyn.train.distributed import DistInfo, broadcast_module
from medsyn.train.logs import save_grid
from medsyn.train.loop import SAMPLE_COLUMNS, Trainer
from medsyn.train.progress import progress, training_done
from medsyn.train.runtime import Runtime

AE_DIR = "autoencoder"
AE_INDEX = 1  # seeds the autoencoder's weights and data order apart from the denoiser's (index 0)
GRID_GROUPS = 4  # label groups shown in the reconstruction grid (a real row and its reconstruction each)
SCALE_IMAGES = 256  # real images whose latents set the scale factor


class AutoencoderTrainer(Trainer):
    """Stage 1: the shared loop with the autoencoder's objective; its sample grids are reconstructions of
    fixed real training images (the EMA autoencoder, posterior mean), one real row and one decoded row."""

    def __init__(self, cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime,
                 info: DistInfo) -> None:  # fmt: skip
        super().__init__(cfg, data, groups, AE_INDEX, out, rt, info, objective=AutoencoderObjective)
        shown = [g for g in groups if len(data.group_rows(g))][:GRID_GROUPS]
        self.grid_names = [name for g in shown for name in (g.name, "reconstructed")]
        rows = [np.resize(data.group_rows(g), SAMPLE_COLUMNS) for g in shown]  # repeats rows of small groups
        self.grid_real = torch.from_numpy(np.stack([data.cache.images[r] for r in np.concatenate(rows)]))

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        real = to_signed(self.grid_real.to(self.rt.device))
        with self.rt.autocast():
            recon = self.G_ema.reconstruct(real).float()
        pairs = torch.stack([real.reshape(-1, SAMPLE_COLUMNS, *real.shape[1:]),
                             recon.reshape(-1, SAMPLE_COLUMNS, *real.shape[1:])], dim=1)  # fmt: skip
        return pairs.reshape(-1, *real.shape[1:])

    def _save_samples(self) -> None:
        save_grid(self.sample(), self.grid_names, self.out / "samples" / f"step-{self.step:07d}.png")


def stage_config(cfg: TrainConfig, model: GANConfig) -> tuple[TrainConfig, float | None]:
    """The autoencoder stage's config (its step count and learning rate) and time limit (module docstring)."""
    opts = ldm_options(model)
    share = float(opts["ae_share"])
    steps = opts["ae_steps"] or max(1, math.ceil(cfg.steps * share / (1 - share)))
    limit = None if cfg.time_limit_s is None else cfg.time_limit_s * share
    return replace(cfg, steps=int(steps), lr_g=float(opts["ae_lr"])), limit


def _scale_images(data: TrainData, device: torch.device) -> torch.Tensor:
    """Up to SCALE_IMAGES training images spread evenly over the set: the same on every rank and every run."""
    pick = data.rows[np.linspace(0, len(data.rows) - 1, min(SCALE_IMAGES, len(data.rows))).round().astype(int)]
    return to_signed(torch.from_numpy(np.array(data.cache.images[np.sort(pick)])).to(device))


def _start_denoiser(trainer: Trainer, ae_state: dict[str, Any], data: TrainData, info: DistInfo) -> None:
    """A fresh denoiser: the autoencoder's final EMA weights, the latent scale factor, and the clock at the
    time the autoencoder used (the denoiser's limit is the run's whole limit)."""
    for G in (trainer.G, trainer.G_ema):
        assert isinstance(G, LatentDiffusionGenerator)
        G.set_autoencoder(ae_state["G_ema"], _scale_images(data, trainer.rt.device), seed=trainer.cfg.seed)
        broadcast_module(G, info)
    trainer.train_seconds = float(ae_state.get("train_seconds", 0.0))


def train_ldm(
    cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime, info: DistInfo, resume: bool,
    show_progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """Both stages (each resumed where it stopped); returns run.json's `progress`: the denoiser's (the run's
    whole training time) with each stage's own under 'stages'."""
    model = data.model_config(cfg)
    ae_cfg, ae_limit = stage_config(cfg, model)
    ae_steps = ae_cfg.steps
    ae_dir, dn_dir = out / AE_DIR / "checkpoints", out / "checkpoints"
    denoiser_started = resume and dn_dir.is_dir()
    ae_state = load_checkpoint(checkpoint_file(ae_dir)) if resume and ae_dir.is_dir() else None
    if not denoiser_started and (ae_state is None or not training_done(ae_state, ae_steps, ae_limit)):
        trainer = AutoencoderTrainer(ae_cfg, data, groups, out / AE_DIR, rt, info)
        trainer.fit(ae_state, show_progress, label="ldm autoencoder", time_limit_s=ae_limit)
        del trainer
        ae_state = None
    if ae_state is None:  # the stage's final checkpoint, also right after training it: one code path
        ae_state = load_checkpoint(checkpoint_file(ae_dir))
    ae_progress = progress(ae_state, ae_steps, ae_limit)

    dn_state = load_checkpoint(checkpoint_file(dn_dir)) if denoiser_started else None
    if dn_state is not None and training_done(dn_state, cfg.steps, cfg.time_limit_s):
        reached = progress(dn_state, cfg.steps, cfg.time_limit_s)
    else:
        trainer = Trainer(cfg, data, groups, 0, out, rt, info)
        if dn_state is None:
            _start_denoiser(trainer, ae_state, data, info)
        reached = trainer.fit(dn_state, show_progress, label="ldm denoiser", time_limit_s=cfg.time_limit_s)
    own = round(reached["train_seconds"] - ae_progress["train_seconds"], 3)
    stages = [{"stage": "autoencoder", **ae_progress}, {"stage": "denoiser", **reached, "train_seconds": own}]
    return {**reached, "stages": stages}
