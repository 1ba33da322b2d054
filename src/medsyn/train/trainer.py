"""A whole training run: the run folder, its label groups, the runtime, and one `Trainer` per generator.

A conditional model (cgan, acgan, stylegan2, ddpm, ldm, twostage) is one generator for all label groups; ldm
and twostage train it in two stages (train/ldm.py, train/twostage.py). An unconditional
model (dcgan) is trained once per label group, as in the per-class augmentation studies: each group is a
sub-run with its own checkpoints, samples and losses under RUN/classes/NN-name/. The loop itself is
loop.py; what one step does is gan.py or diffusion.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from medsyn.errors import ConfigError
from medsyn.io import write_text_atomic
from medsyn.models import MODELS, GANConfig
from medsyn.models.registry import build_generator
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.config import TrainConfig
from medsyn.train.data import Group, TrainData, open_train_data
from medsyn.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from medsyn.train.ldm import train_ldm
from medsyn.train.logs import notice
from medsyn.train.loop import Trainer
from medsyn.train.precision import probe_cpu_precision
from medsyn.train.privacy import check_private_model
from medsyn.train.progress import progress, progress_line, run_progress, training_done
from medsyn.train.run import RUN_FILE, read_run_meta, write_run_meta
from medsyn.train.runtime import Runtime, derive_seed
from medsyn.train.twostage import train_twostage

__all__ = [  # progress_line, derive_seed, run_progress: imported from here by the CLI and generate
    "Runtime",
    "Trainer",
    "derive_seed",
    "progress",
    "progress_line",
    "resolve_runtime",
    "run_progress",
    "train",
    "training_done",
    "wants_cuda",
]


#: Models trained in stages by one command, each stage a `Trainer` of its own.
STAGED = {"ldm": train_ldm, "twostage": train_twostage}


def wants_cuda(device: str) -> bool:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def resolve_runtime(
    cfg: TrainConfig, info: DistInfo, model: GANConfig | None = None, previous: Mapping[str, Any] | None = None
) -> Runtime:
    """Device, precision, memory format and loader workers for this process.

    `precision: auto` on a CPU keeps `previous` (the run's recorded runtime) when resuming, else times `model`
    in fp32 and bf16 on rank 0 (`precision.probe_cpu_precision`) and every rank takes rank 0's choice.
    """
    cuda = wants_cuda(cfg.device)
    device = torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")
    precision, probe = cfg.precision, None
    if precision == "auto" and cuda:  # DP refuses fp16: its overflow skips depend on the data
        precision = "bf16" if torch.cuda.is_bf16_supported() else ("fp16" if cfg.dp_epsilon is None else "fp32")
    elif precision == "auto" and previous and previous.get("device") == "cpu":
        precision, probe = str(previous["precision"]), previous.get("precision_probe")
    elif precision == "auto":
        probe = probe_cpu_precision(model, cfg.batch) if info.main and model is not None else None
        bf16 = torch.tensor([float(probe is not None and probe["choice"] == "bf16")])
        precision = "bf16" if all_reduce_sum(bf16, info).item() > 0 else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs a GPU; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and not cuda and not torch.backends.mkldnn.is_available():
        raise ConfigError("precision bf16 on this CPU needs oneDNN (mkldnn), which this torch build lacks")
    channels_last = cfg.channels_last if cfg.channels_last is not None else precision != "fp32"
    workers = cfg.workers if cfg.workers is not None else (min(4, (os.cpu_count() or 1) // info.world) if cuda else 0)
    return Runtime(device, precision, channels_last, workers, probe)


# ---------------------------------------------------------------------- a whole run
def _session_config(cfg: TrainConfig | None, out: Path, resume: bool) -> TrainConfig:
    """The resolved config of this session: a new run's, or a resumed run's (with allowed changes)."""
    if not resume:
        if cfg is None:
            raise ConfigError("a new run needs a config (dataset spec, model, ...)")
        cfg.validate()
        if (out / RUN_FILE).exists():
            raise ConfigError(
                f"{out} already holds a training run; pass --resume to continue it or choose another --out"
            )
        return cfg.resolved()
    meta = read_run_meta(out)
    stored = TrainConfig.from_dict(meta["config"])
    if cfg is None:
        return stored
    changed = cfg.changes_against(stored)
    if changed:
        diffs = ", ".join(f"{k}: {getattr(stored, k)!r} -> {getattr(cfg.resolved(), k)!r}" for k in changed)
        raise ConfigError(f"--resume of {out} with different settings ({diffs}); resume with the run's own config")
    return cfg.resolved()


def train(
    cfg: TrainConfig | None,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    quiet: bool = False,
    time_limit_s: float | None = None,
) -> Path:
    """Train a model into the run folder `out_dir`; `resume` continues a killed or finished run exactly.

    With `resume`, `cfg` may be None (use the run's config) or the run's config with a new schedule
    (`steps`, `time_limit_s`, logging intervals) or hardware settings. Launch under torchrun for
    data-parallel training. The config's `time_limit_s` (or this argument, which overrides it and is
    stored with the run, so `resume` keeps it) stops training with a checkpoint once that much training
    time has been spent, counted over resumed sessions; per-class models share it equally. Checked every
    `log_every` steps. How far each generator got and why it stopped is written to run.json's `progress`.
    """
    out = Path(out_dir)
    cfg = _session_config(cfg, out, resume)
    if time_limit_s is not None:
        cfg = replace(cfg, time_limit_s=time_limit_s)
        cfg.validate()
    info = init_distributed(wants_cuda(cfg.device))
    try:
        if cfg.dp_epsilon is not None and info.world > 1:
            raise ConfigError(
                "--dp-epsilon trains in one process: under torchrun each process would add its own noise to its "
                "shard's gradients and the averaging would shrink it below what the privacy accounting assumes"
            )
        data = open_train_data(cfg, out, info, quiet)
        conditional = MODELS[cfg.model].conditional
        groups = data.groups(per_class=not conditional)
        if not conditional:
            empty = [g.name for g in groups if g.count == 0]
            if empty and info.main:
                notice(f"no training images for {', '.join(empty)}: no generator is trained for them")
            groups = [g for g in groups if g.count > 0]
        model = data.model_config(cfg)
        with torch.random.fork_rng(devices=[]):
            build_generator(model)  # an impossible model config is a one-line error before the run folder exists
            if cfg.dp_epsilon is not None:
                check_private_model(model)  # so are layers that cannot be trained privately
        previous = read_run_meta(out).get("runtime") if resume else None
        rt = resolve_runtime(cfg, info, model, previous)
        if rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        meta = {
            "model": cfg.model,
            "conditional": conditional,
            "config": cfg.to_dict(),
            "groups": [g.to_dict() for g in groups],
            "labels": data.label_stats(),
            "runtime": {**rt.to_dict(), "world": info.world},
            "data": {
                "cache": str(data.cache.path),
                "spec": data.cache.spec,
                "content_hash": data.cache.meta.get("content_hash"),
            },
        }
        if info.main:
            out.mkdir(parents=True, exist_ok=True)
            write_run_meta(out, meta)
            write_text_atomic(out / "config.yaml", cfg.to_yaml())
        barrier(info)
        stages = STAGED.get(cfg.model, _train_generators)
        reached = stages(cfg, data, groups, out, rt, info, resume, info.main and not quiet)
        if info.main:
            dp = {"differential_privacy": reached["privacy"]} if "privacy" in reached else {}
            write_run_meta(out, {**meta, "progress": reached, **dp})
        barrier(info)  # no rank tears the process group down while another is still in a collective
    finally:
        shutdown(info)
    return out


def _train_generators(
    cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime, info: DistInfo, resume: bool,
    show_progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """One generator for all groups (conditional models) or one per group, each resumed where it stopped and
    sharing the time limit equally; returns run.json's `progress`."""
    conditional = MODELS[cfg.model].conditional
    plan = [(0, groups, out)] if conditional else [(i, [g], out / g.dir) for i, g in enumerate(groups)]
    share = None if cfg.time_limit_s is None else cfg.time_limit_s / len(plan)
    reached = []
    for index, trained_groups, folder in plan:
        state = None
        if resume and (folder / "checkpoints").is_dir():
            state = load_checkpoint(checkpoint_file(folder / "checkpoints"))
            if training_done(state, cfg.steps, share):
                reached.append(progress(state, cfg.steps, share))
                continue
        label = cfg.model if conditional else f"{cfg.model} {trained_groups[0].name}"
        trainer = Trainer(cfg, data, trained_groups, index, folder, rt, info)
        reached.append(trainer.fit(state, show_progress=show_progress, label=label, time_limit_s=share))
    return run_progress(reached, [g[1][0].name for g in plan], conditional)
