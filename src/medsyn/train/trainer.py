"""The GAN training loop: one `Trainer` per generator, `train` for a whole run.

A conditional model (cgan, acgan, stylegan2) is one generator for all label groups. An unconditional
model (dcgan) is trained once per label group, as in the per-class augmentation studies: each group is a
sub-run with its own checkpoints, samples and losses under RUN/classes/NN-name/.

Exact resume: every source of randomness is either restored from the checkpoint (python/numpy/torch/CUDA
RNG states of every rank, optimiser and scaler state, EMA, ADA p and its accumulator, loss accumulators)
or a pure function of the step (the data order), so on CPU a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsyn.data.cache import to_signed
from medsyn.errors import CheckpointError, ConfigError, MedsynError
from medsyn.io import write_text_atomic
from medsyn.models import MODELS, AdaptiveAugment, GANConfig, build_gan, diff_augment
from medsyn.seed import seed_everything
from medsyn.train import losses
from medsyn.train.checkpoint import (
    checkpoint_file,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stamp,
)
from medsyn.train.config import TrainConfig
from medsyn.train.data import Group, TrainData, make_loader, open_train_data
from medsyn.train.distributed import (
    DistInfo,
    all_reduce_sum,
    average_buffers,
    average_gradients,
    barrier,
    broadcast_module,
    gather_objects,
    init_distributed,
    shutdown,
)
from medsyn.train.logs import LossLog, notice, save_grid, step_progress
from medsyn.train.precision import probe_cpu_precision
from medsyn.train.run import RUN_FILE, read_run_meta, write_run_meta

ADA_INTERVAL = 4  # steps between ADA p updates (StyleGAN2-ADA)
SAMPLE_COLUMNS = 8
MAX_SAMPLE_ROWS = 20


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (run seed, group, rank, ...), without collisions like a+b."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes: resolved from the config's 'auto' settings on this machine."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    workers: int
    precision_probe: Mapping[str, Any] | None = None  # the timing behind an 'auto' choice on CPU

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "workers": self.workers,
            **({"precision_probe": dict(self.precision_probe)} if self.precision_probe else {}),
        }


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
    if precision == "auto" and cuda:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
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


class Trainer:
    """Trains one generator/discriminator pair on the rows of one label group (or all rows)."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        groups: list[Group],
        index: int,
        out: Path,
        rt: Runtime,
        info: DistInfo,
    ) -> None:
        """`groups`: the groups this generator draws (all of them when conditional); `index` seeds it."""
        self.cfg, self.rt, self.info, self.out, self.index, self.groups = cfg, rt, info, out, index, groups
        self.conditional = MODELS[cfg.model].conditional
        self.rows = data.rows if self.conditional else data.group_rows(groups[0])
        self.data = data
        k = len(data.classes) if self.conditional else 0
        self.gan_cfg = GANConfig(cfg.model, cfg.size, data.cache.channels, k, cfg.z_dim, cfg.width, cfg.model_extra)
        seed_everything(derive_seed(cfg.seed, index))  # identical initial weights on every rank
        G, D = build_gan(self.gan_cfg)
        self.G = G.to(rt.device, memory_format=rt.memory_format)
        self.D = D.to(rt.device, memory_format=rt.memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        for m in (self.G, self.D, self.G_ema):
            broadcast_module(m, info)
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas, fused=True)
        fp16 = rt.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(rt.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(rt.device.type, enabled=fp16)
        self.ada = AdaptiveAugment(cfg.ada_target, policy=cfg.augment_policy) if cfg.augment == "ada" else None
        self.ada_acc = torch.zeros(2, device=rt.device)  # sum of sign(D(real)), count
        has_cls = cfg.model == "acgan"
        self.keys = (
            ["d_loss", "g_loss"]
            + ["cls_loss"] * has_cls
            + ["r1"] * (cfg.r1_gamma > 0)
            + ["gp"] * (cfg.loss == "wgan-gp")
        )
        self._present: dict[tuple[bool, ...], torch.Tensor] = {}
        self.acc = torch.zeros(2, len(self.keys), device=rt.device)  # per-key sum and count since last log row
        self.log = LossLog(out / "losses.csv", [*self.keys, "img_per_s", "aug_p"])
        self.ckpt_dir = out / "checkpoints"
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0  # wall time spent in fit() over all sessions, for time-limited runs
        self.failures = 0
        self.sample_z = torch.randn(SAMPLE_COLUMNS, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        seed_everything(derive_seed(cfg.seed, index, info.rank))  # each rank draws its own z / augmentation

    # ------------------------------------------------------------------ one step
    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.ada is not None:
            return self.ada.apply(x)
        if self.cfg.augment == "diffaugment":
            return diff_augment(x, self.cfg.augment_policy)
        return x

    def _optimise(
        self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor, module: nn.Module
    ) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        average_gradients(module.parameters(), self.info)
        scaler.step(opt)
        scaler.update()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA of G; the decay ramps up as (1+t)/(10+t) so early samples do not show the initial weights."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def train_step(self, real_u8: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator and one generator update; returns the detached loss terms."""
        cfg, dev = self.cfg, self.rt.device
        real = to_signed(real_u8.to(dev, non_blocking=True)).contiguous(memory_format=self.rt.memory_format)
        y_raw = labels.to(dev, non_blocking=True) if self.conditional else None
        y = torch.nan_to_num(y_raw, nan=0.0) if y_raw is not None else None  # fake labels: this batch's labels
        z = torch.randn(real.shape[0], cfg.z_dim, device=dev)
        r1_now = cfg.r1_gamma > 0 and self.step % cfg.r1_every == 0
        terms: dict[str, torch.Tensor] = {}

        self.D.requires_grad_(True)
        real.requires_grad_(r1_now)
        with self.rt.autocast():
            fake = self.G(z, y)
            real_logits, real_cls = self.D(self._augment(real), y)
            fake_logits, fake_cls = self.D(self._augment(fake.detach()), y)
        real_logits = real_logits.float()
        loss_d = losses.d_loss(cfg.loss, real_logits, fake_logits.float())
        terms["d_loss"] = loss_d.detach()
        if real_cls is not None and fake_cls is not None:
            cls = losses.class_loss(real_cls, y_raw) + losses.class_loss(fake_cls, y)
            loss_d = loss_d + cls
            terms["cls_loss"] = cls.detach()
        scale = self.scaler_d.get_scale() if self.scaler_d.is_enabled() else 1.0
        if cfg.loss == "wgan-gp":
            gp = losses.gradient_penalty(lambda x: self._critic(x, y), real, fake, scale)
            loss_d = loss_d + losses.WGAN_GP_LAMBDA * gp
            terms["gp"] = gp.detach()
        if r1_now:
            r1 = losses.r1_penalty(real_logits, real, scale)
            loss_d = loss_d + (cfg.r1_gamma / 2) * cfg.r1_every * r1
            terms["r1"] = r1.detach()
        self._optimise(self.opt_d, self.scaler_d, loss_d, self.D)
        if self.ada is not None:
            self.ada_acc += torch.stack([real_logits.detach().sign().sum(), real_logits.new_full((), len(real_logits))])

        self.D.requires_grad_(False)  # G's step needs no discriminator weight gradients
        with self.rt.autocast():
            logits, cls_logits = self.D(self._augment(fake), y)
        loss_g = losses.g_loss(cfg.loss, logits.float())
        terms["g_loss"] = loss_g.detach()
        if cls_logits is not None:
            loss_g = loss_g + losses.class_loss(cls_logits, y)
        self._optimise(self.opt_g, self.scaler_g, loss_g, self.G)
        average_buffers((self.G, self.D), self.info)
        self._update_ema()
        return terms

    def _critic(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with self.rt.autocast():
            return self.D(self._augment(x), y)[0].float()

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Add this step's terms to the log sums on the device (no host sync; read at log steps only)."""
        present = tuple(k in terms for k in self.keys)
        if present not in self._present:  # at most two patterns (R1 step or not), kept on the device
            self._present[present] = torch.tensor(present, dtype=self.acc.dtype, device=self.acc.device)
        zero = self.acc.new_zeros(())
        self.acc[0] += torch.stack([terms.get(k, zero) for k in self.keys])
        self.acc[1] += self._present[present]

    def _update_ada(self) -> None:
        assert self.ada is not None
        total = all_reduce_sum(self.ada_acc, self.info).tolist()
        if total[1] > 0:
            self.ada.update(total[0] / total[1], n_images=int(total[1]))
        self.ada_acc.zero_()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The whole training state (collective under DDP: gathers every rank's RNG state)."""
        return stamp(
            {
                "config": self.cfg.to_dict(),
                "model": self.gan_cfg.to_dict(),
                "group": self.groups[0].name if not self.conditional else None,
                "step": self.step,
                "images_seen": self.images_seen,
                "train_seconds": self.train_seconds,
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(),
                "scaler_d": self.scaler_d.state_dict(),
                "augment": self.ada.state_dict() if self.ada is not None else None,
                "ada_acc": self.ada_acc.cpu(),
                "acc": self.acc.cpu(),
                "rng": gather_objects(rng_state(self.rt.device), self.info),
                "world": self.info.world,
                "sampler_position": self.step * self.cfg.batch,  # images this rank has drawn
                "runtime": self.rt.to_dict(),
            }
        )

    def load_state(self, ck: dict[str, Any]) -> None:
        try:
            self.G.load_state_dict(ck["G"])
            self.D.load_state_dict(ck["D"])
            self.G_ema.load_state_dict(ck["G_ema"])
            self.opt_g.load_state_dict(ck["opt_g"])
            self.opt_d.load_state_dict(ck["opt_d"])
            if self.scaler_g.is_enabled() and ck["scaler_g"]:
                self.scaler_g.load_state_dict(ck["scaler_g"])
                self.scaler_d.load_state_dict(ck["scaler_d"])
            if self.ada is not None and ck["augment"] is not None:
                self.ada.load_state_dict(ck["augment"])
            self.ada_acc.copy_(ck["ada_acc"])
            self.acc.copy_(ck["acc"])
            self.step, self.images_seen = int(ck["step"]), int(ck["images_seen"])
            self.train_seconds = float(ck.get("train_seconds", 0.0))  # absent in checkpoints before 0.2
            rngs = ck["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.ckpt_dir}: checkpoint does not match this run ({why})") from None
        for opt in (self.opt_g, self.opt_d):
            _match_param_layout(opt)
        if ck["world"] == self.info.world:
            set_rng_state(rngs[self.info.rank], self.rt.device)
        else:
            if self.info.main:
                notice(
                    f"resuming a {ck['world']}-process run with {self.info.world} processes: it continues, "
                    "but not bit-identically to an uninterrupted run"
                )
            seed_everything(derive_seed(self.cfg.seed, self.index, self.info.rank, self.step))

    def _write_checkpoint(self) -> None:
        state = self.state_dict()
        error: CheckpointError | None = None
        if self.info.main:
            try:
                save_checkpoint(state, self.ckpt_dir)
                self.log.plot(self.out / "losses.png")
            except CheckpointError as exc:
                error = exc
        failed = all_reduce_sum(torch.tensor([float(error is not None)], device=self.rt.device), self.info)
        if failed.item():  # every rank stops, not only the one that could not write
            raise error or CheckpointError("rank 0 could not write the checkpoint; see its error message")

    def _rollback(self, bad: dict[str, float]) -> None:
        """Divergence guard: back to the last good checkpoint with lower learning rates and fresh noise."""
        bad_step = self.step
        self.failures += 1
        what = ", ".join(f"{k}={v:g}" for k, v in bad.items() if not np.isfinite(v)) or "non-finite loss"
        if self.failures > self.cfg.max_rollbacks:
            raise MedsynError(
                f"training diverged: {what} at step {bad_step}, {self.failures} times in a row despite "
                "rolling back to the last checkpoint and halving the learning rates; try --precision fp32, "
                "lower --lr-g/--lr-d, or another --loss"
            )
        path = checkpoint_file(self.ckpt_dir)
        self.load_state(load_checkpoint(path))
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] *= 0.5**self.failures
        seed_everything(derive_seed(self.cfg.seed, self.index, self.info.rank, self.step, self.failures))
        if self.info.main:
            self.log.truncate(self.step)
            notice(
                f"[yellow]{self.out.name}: {what} at step {bad_step}; rolled back to step {self.step} "
                f"({path.name}), "
                f"learning rates x{0.5**self.failures:g}, RNG reseeded "
                f"(attempt {self.failures}/{self.cfg.max_rollbacks})[/]"
            )

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """Sample grid images from the EMA generator with the run's fixed z (touches no training RNG)."""
        dev = self.rt.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)
            if self.conditional:
                groups = self.groups[:MAX_SAMPLE_ROWS]
                z = self.sample_z.repeat(len(groups), 1)
                y = torch.tensor([g.label for g in groups for _ in range(SAMPLE_COLUMNS)], dtype=torch.float32)
                y = y.to(dev)
            else:
                z = torch.cat([self.sample_z, torch.randn(SAMPLE_COLUMNS, self.cfg.z_dim)])
                y = None
            with self.rt.autocast():
                return self.G_ema(z.to(dev), y).float()

    def _save_samples(self) -> None:
        names = [g.name for g in self.groups[:MAX_SAMPLE_ROWS]] if self.conditional else [self.groups[0].name] * 2
        save_grid(self.sample(), names, self.out / "samples" / f"step-{self.step:07d}.png")

    # ------------------------------------------------------------------ the loop
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = make_loader(
            self.data,
            self.rows,
            self.cfg.batch,
            self.info,
            derive_seed(self.cfg.seed, self.index),
            self.step * self.cfg.batch,
            self.rt.workers,
            self.rt.device.type == "cuda",
        )
        return iter(loader)

    def _out_of_time(self, limit: float | None, since: float, base: float) -> bool:
        """Whether the training time (all sessions) has reached `limit`; rank 0's clock decides for all
        ranks, so they stop at the same step."""
        if limit is None:
            return False
        self.train_seconds = base + time.perf_counter() - since
        flag = torch.tensor([float(self.info.main and self.train_seconds >= limit)], device=self.rt.device)
        return bool(all_reduce_sum(flag, self.info).item() > 0)

    def fit(
        self, resume: dict[str, Any] | None, show_progress: bool, label: str, time_limit_s: float | None = None
    ) -> dict[str, Any]:
        """Train to `cfg.steps` (or until `time_limit_s` of training time, counted over resumed sessions
        too), from scratch or from the checkpoint `resume`; returns `progress(...)` of where it stopped."""
        cfg, info = self.cfg, self.info
        per_step = cfg.batch * info.world
        if resume is not None:
            self.load_state(resume)
        since, base = time.perf_counter(), self.train_seconds
        if info.main:
            self.log.truncate(self.step)
        if resume is None:
            self._write_checkpoint()  # step 0: the divergence guard always has a state to return to
        batches = self._batches()
        with step_progress(label, cfg.steps, self.step, show_progress) as bar:
            mark_step, mark_time = self.step, time.perf_counter()
            while self.step < cfg.steps:
                real, labels = next(batches)
                terms = self.train_step(real, labels)
                self.step += 1
                self.images_seen += per_step
                self._accumulate(terms)
                if self.ada is not None and self.step % ADA_INTERVAL == 0:
                    self._update_ada()
                out_of_time = self.step % cfg.log_every == 0 and self._out_of_time(time_limit_s, since, base)
                last = self.step == cfg.steps or out_of_time
                due_log = last or self.step % cfg.log_every == 0
                due_ckpt = last or self.step % cfg.ckpt_every == 0
                due_sample = last or self.step % cfg.sample_every == 0
                if not (due_log or due_ckpt or due_sample):
                    continue
                totals = all_reduce_sum(self.acc, info)
                means = (totals[0] / totals[1].clamp(min=1)).tolist()
                values = {
                    k: (m if n > 0 else float("nan"))
                    for k, m, n in zip(self.keys, means, totals[1].tolist(), strict=True)
                }
                if not torch.isfinite(totals[0]).all():
                    self._rollback(values)
                    batches = self._batches()
                    bar.update(self.step)
                    mark_step, mark_time = self.step, time.perf_counter()
                    continue
                if due_log:
                    rate = (self.step - mark_step) * per_step / max(time.perf_counter() - mark_time, 1e-9)
                    values.update(img_per_s=rate, aug_p=self.ada.p if self.ada is not None else 0.0)
                    if info.main:
                        self.log.append(self.step, self.images_seen, values)
                    self.acc.zero_()
                    shown = "  ".join(f"{k} {v:.3f}" for k, v in values.items() if k in self.keys and np.isfinite(v))
                    bar.update(self.step, f"{shown}  {rate:.0f} img/s")
                if due_sample and info.main:
                    self._save_samples()
                if due_ckpt:
                    self.train_seconds = base + time.perf_counter() - since
                    self._write_checkpoint()
                    self.failures = 0
                bar.update(self.step)
                mark_step, mark_time = self.step, time.perf_counter()
                if out_of_time:
                    break
        return progress(self.state_dict_summary(), cfg.steps, time_limit_s)

    def state_dict_summary(self) -> dict[str, Any]:
        """The counters of `state_dict` that say how far training got (cheap: no weights, no collectives)."""
        return {"step": self.step, "images_seen": self.images_seen, "train_seconds": self.train_seconds}


def training_done(state: Mapping[str, Any], steps: int, time_limit_s: float | None = None) -> bool:
    """Whether a checkpoint has reached `steps`, or used up a time limit."""
    spent = float(state.get("train_seconds", 0.0))
    return int(state["step"]) >= steps or (time_limit_s is not None and spent >= time_limit_s)


def progress(state: Mapping[str, Any], steps: int, time_limit_s: float | None) -> dict[str, Any]:
    """How far a generator got and why it stopped, as run.json's `progress` records it.

    stop_reason: 'completed' (all `steps`), 'time-limit' (the training-time budget ran out first) or
    'interrupted' (neither: the run was killed and can be resumed)."""
    step = int(state["step"])
    spent = float(state.get("train_seconds", 0.0))
    if step >= steps:
        reason = "completed"
    elif time_limit_s is not None and spent >= time_limit_s:
        reason = "time-limit"
    else:
        reason = "interrupted"
    return {
        "steps": step,
        "steps_planned": steps,
        "images_seen": int(state["images_seen"]),
        "train_seconds": round(spent, 3),
        "stop_reason": reason,
    }


def progress_line(prog: Mapping[str, Any]) -> str:
    """One line for the end of `medsyn train`: steps trained, images seen and why training stopped."""
    why = {
        "completed": "all planned steps done",
        "time-limit": "stopped by the time limit: the generator is under-trained; resume with a larger --time-limit",
        "interrupted": "interrupted; resume with --resume",
    }[prog["stop_reason"]]
    return (
        f"trained {prog['steps']:,} of {prog['steps_planned']:,} steps ({prog['images_seen']:,} images seen, "
        f"{prog['train_seconds']:.0f} s of training): {why}"
    )


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimiser state the memory format of its parameter (checkpoints store it contiguous)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


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
        data = open_train_data(cfg, out, info, quiet)
        conditional = MODELS[cfg.model].conditional
        groups = data.groups(per_class=not conditional)
        if not conditional:
            empty = [g.name for g in groups if g.count == 0]
            if empty and info.main:
                notice(f"no training images for {', '.join(empty)}: no generator is trained for them")
            groups = [g for g in groups if g.count > 0]
        k = len(data.classes) if conditional else 0
        model = GANConfig(cfg.model, cfg.size, data.cache.channels, k, cfg.z_dim, cfg.width, cfg.model_extra)
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
            reached.append(trainer.fit(state, show_progress=info.main and not quiet, label=label, time_limit_s=share))
        if info.main:
            write_run_meta(out, {**meta, "progress": run_progress(reached, [g[1][0].name for g in plan], conditional)})
        barrier(info)  # no rank tears the process group down while another is still in a collective
    finally:
        shutdown(info)
    return out


def run_progress(reached: list[dict[str, Any]], names: list[str], conditional: bool) -> dict[str, Any]:
    """run.json's `progress` from each generator's `progress(...)`: the generator's own, or for per-class
    runs the totals (fewest steps, images summed, the least finished reason) and each group's."""
    if conditional:
        return reached[0]
    order = ("completed", "time-limit", "interrupted")  # the run's reason is its least finished group's
    total = {
        "steps": min(r["steps"] for r in reached),
        "steps_planned": reached[0]["steps_planned"],
        "images_seen": sum(r["images_seen"] for r in reached),
        "train_seconds": round(sum(r["train_seconds"] for r in reached), 3),
        "stop_reason": max((r["stop_reason"] for r in reached), key=order.index),
    }
    return {**total, "groups": [{"group": n, **r} for n, r in zip(names, reached, strict=True)]}
