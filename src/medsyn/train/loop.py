"""The training loop every model family shares: one `Trainer` per generator.

What a step does is the model family's `Objective` (train/gan.py: discriminator + generator updates;
train/diffusion.py: one denoising update). Everything around it is here and identical for both: the EMA of
the generator, exact resume, the divergence guard, time limits, loss logs, sample grids and checkpoints.

Exact resume: every source of randomness is either restored from the checkpoint (python/numpy/torch/CUDA
RNG states of every rank, optimiser and scaler state, EMA, the objective's own state, loss accumulators)
or a pure function of the step (the data order), so on CPU a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsyn.data.cache import to_signed
from medsyn.errors import CheckpointError, MedsynError
from medsyn.models import MODELS, GANConfig
from medsyn.seed import seed_everything
from medsyn.train.checkpoint import (
    checkpoint_file,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stamp,
)
from medsyn.train.config import TrainConfig
from medsyn.train.data import Group, TrainData, make_loader
from medsyn.train.diffusion import DiffusionObjective
from medsyn.train.distributed import DistInfo, all_reduce_sum, broadcast_module, gather_objects
from medsyn.train.dp_objectives import private_objective
from medsyn.train.gan import GANObjective
from medsyn.train.logs import LossLog, notice, save_grid, step_progress
from medsyn.train.objective import Objective
from medsyn.train.privacy import DPAccount
from medsyn.train.progress import progress
from medsyn.train.runtime import Runtime, derive_seed

#: A DP-SGD update rule: (config, model, runtime, dist info, privacy account, label pool or None) -> Objective.
PrivateFactory = Callable[[TrainConfig, GANConfig, Runtime, DistInfo, DPAccount, torch.Tensor | None], Objective]
SAMPLE_COLUMNS = 8
MAX_SAMPLE_ROWS = 20
OBJECTIVES: dict[str, type[GANObjective] | type[DiffusionObjective]] = {
    "gan": GANObjective,
    "diffusion": DiffusionObjective,
}


class Trainer:
    """Trains one generator (GAN or diffusion) on the rows of one label group (or all rows)."""

    masks = False  # batches carry each image's mask as a last channel (the stages of twostage)

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        groups: list[Group],
        index: int,
        out: Path,
        rt: Runtime,
        info: DistInfo,
        objective: Callable[[TrainConfig, GANConfig, Runtime, DistInfo], Objective] | None = None,
        private: PrivateFactory | None = None,
        account: DPAccount | None = None,
    ) -> None:
        """`groups`: the groups this generator draws (all of them when conditional); `index` seeds it;
        `objective`: the update rule (default: the model family's; the LDM's autoencoder stage has its own);
        `private`: its DP-SGD form under `--dp-epsilon` (default: the model family's, when `objective` is None);
        `account`: a privacy account shared with other trainers on the same images (twostage's stages), else
        this trainer calibrates its own."""
        self.cfg, self.rt, self.info, self.out, self.index, self.groups = cfg, rt, info, out, index, groups
        self.conditional = MODELS[cfg.model].conditional
        self.rows = data.rows if self.conditional else data.group_rows(groups[0])
        self.data = data
        self.gan_cfg = data.model_config(cfg)
        seed_everything(derive_seed(cfg.seed, index))  # identical initial weights on every rank
        family = MODELS[cfg.model].family
        self.dp: DPAccount | None = None  # differentially private training (train/privacy.py)
        if cfg.dp_epsilon is not None and (objective is None or private is not None):
            self.units = dp_units(cfg, data, self.rows)
            self.dp = account or DPAccount.for_run(cfg, len(self.rows), dp_patients(self.units))
            pool = torch.from_numpy(data.labels[self.rows]) if self.conditional else None
            rule = private or (lambda c, m, r, i, a, p: private_objective(c, m, r, i, family, a, p))
            self.objective: Objective = rule(cfg, self.gan_cfg, rt, info, self.dp, pool)
        else:
            self.objective = (objective or OBJECTIVES[family])(cfg, self.gan_cfg, rt, info)
        self.G = self.objective.G
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        broadcast_module(self.G_ema, info)
        self.keys = self.objective.keys
        self._present: dict[tuple[bool, ...], torch.Tensor] = {}
        self.acc = torch.zeros(2, len(self.keys), device=rt.device)  # per-key sum and count since last log row
        self.log = LossLog(out / "losses.csv", [*self.keys, "img_per_s", *self.objective.columns])
        self.ckpt_dir = out / "checkpoints"
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0  # wall time spent in fit() over all sessions, for time-limited runs
        self.failures = 0
        # a private run releases what its private network shaped (loss rows, sample grids) only once a checkpoint
        # holds the steps behind them: a killed run resumes from its checkpoint and re-takes the later steps with
        # the same noise, so anything released from those steps before the kill would be a second, differently
        # computed release of the same noisy steps (device or precision may change on resume)
        self._held_rows: list[tuple[int, int, dict[str, float]]] = []
        self._sample_held = False
        self.sample_z = torch.randn(SAMPLE_COLUMNS, self.G.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        seed_everything(derive_seed(cfg.seed, index, info.rank))  # each rank draws its own z / noise / augmentation

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA of G; the decay ramps up as (1+t)/(10+t) so early samples do not show the initial weights."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def train_step(self, real_u8: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The objective's update on one batch, then the EMA; returns the detached loss terms."""
        real, y = self._inputs(real_u8, labels)
        terms = self.objective.train_step(real, y, self.step)
        self._update_ema()
        return terms

    def _inputs(self, real_u8: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch on the device as the objective takes it: images in [-1, 1], labels (conditional models)."""
        dev = self.rt.device
        real = to_signed(real_u8.to(dev, non_blocking=True)).contiguous(memory_format=self.rt.memory_format)
        return real, labels.to(dev, non_blocking=True) if self.conditional else None

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Add this step's terms to the log sums on the device (no host sync; read at log steps only)."""
        present = tuple(k in terms for k in self.keys)
        if present not in self._present:  # at most two patterns (R1 step or not), kept on the device
            self._present[present] = torch.tensor(present, dtype=self.acc.dtype, device=self.acc.device)
        zero = self.acc.new_zeros(())
        self.acc[0] += torch.stack([terms.get(k, zero) for k in self.keys])
        self.acc[1] += self._present[present]

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
                "G_ema": self.G_ema.state_dict(),
                **self.objective.state_dict(),
                "acc": self.acc.cpu(),
                "rng": gather_objects(rng_state(self.rt.device), self.info),
                "world": self.info.world,
                "sampler_position": self.step * self.cfg.batch,  # images this rank has drawn
                "runtime": self.rt.to_dict(),
                **({"privacy": self.dp.state_dict()} if self.dp is not None else {}),
            }
        )

    def load_state(self, ck: dict[str, Any]) -> None:
        try:
            self.G.load_state_dict(ck["G"])
            self.G_ema.load_state_dict(ck["G_ema"])
            self.objective.load_state_dict(ck)
            self.acc.copy_(ck["acc"])
            self.step, self.images_seen = int(ck["step"]), int(ck["images_seen"])
            self.train_seconds = float(ck.get("train_seconds", 0.0))  # absent in checkpoints before 0.2
            if self.dp is not None and int(ck["privacy"]["steps"]) >= self.dp.steps:  # a shared account may
                self.dp.load_state_dict(ck["privacy"])  # have counted another trainer's later steps: keep those
            rngs = ck["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.ckpt_dir}: checkpoint does not match this run ({why})") from None
        for opt in self.objective.optimizers():
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
                for row in self._held_rows:
                    self.log.append(*row)
                self.log.plot(self.out / "losses.png")
            except CheckpointError as exc:
                error = exc
        failed = all_reduce_sum(torch.tensor([float(error is not None)], device=self.rt.device), self.info)
        if failed.item():  # every rank stops, not only the one that could not write
            raise error or CheckpointError("rank 0 could not write the checkpoint; see its error message")
        self._held_rows = []

    def _diverged(self, totals: torch.Tensor, values: dict[str, float]) -> bool:
        """Whether training diverged since the last check. A private run decides on public quantities only
        (dp_objectives.PublicGuard): its loss terms on real images are not noised and must not steer it."""
        if self.dp is None:
            return not bool(torch.isfinite(totals[0]).all())
        return self.objective.guard.take()  # type: ignore[attr-defined]

    def _rollback(self, bad: dict[str, float]) -> None:
        """Divergence guard: back to the last good checkpoint with lower learning rates and fresh noise."""
        bad_step = self.step
        self.failures += 1
        self._held_rows, self._sample_held = [], False  # shaped by the discarded steps: never released
        if self.dp is not None:  # what decided (values on real images, unnoised, are not named)
            what = "non-finite weights or generated-batch loss"
        else:
            what = ", ".join(f"{k}={v:g}" for k, v in bad.items() if not np.isfinite(v)) or "non-finite loss"
        if self.failures > self.cfg.max_rollbacks:
            raise MedsynError(
                f"training diverged: {what} at step {bad_step}, {self.failures} times in a row despite "
                "rolling back to the last checkpoint and halving the learning rates; try --precision fp32, "
                "lower learning rates, or (GANs) another --loss"
            )
        path = checkpoint_file(self.ckpt_dir)
        spent = self.dp.state_dict() if self.dp is not None else None
        self.load_state(load_checkpoint(path))
        if self.dp is not None and spent is not None:
            self.dp.load_state_dict(spent)  # rolled-back steps were taken: their privacy stays spent
        for opt in self.objective.optimizers():
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
        if self.dp is not None:  # a kill now must not resume with the rolled-back steps' privacy forgotten
            self._write_checkpoint()

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
                z = torch.cat([self.sample_z, torch.randn(SAMPLE_COLUMNS, self.G.z_dim)])
                y = None
            with self.rt.autocast():
                return self.G_ema(z.to(dev), y).float()

    def _save_samples(self) -> None:
        names = [g.name for g in self.groups[:MAX_SAMPLE_ROWS]] if self.conditional else [self.groups[0].name] * 2
        save_grid(self.sample(), names, self.out / "samples" / f"step-{self.step:07d}.png")

    # ------------------------------------------------------------------ the loop
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed-size shuffled batches from the images drawn so far, or (DP) Poisson batches seeded by the
        run's secret and the noisy steps taken (fresh draws after a rollback too)."""
        dp = self.dp
        loader = make_loader(
            self.data,
            self.rows,
            self.cfg.batch,
            self.info,
            derive_seed(self.cfg.seed, self.index) if dp is None else dp.sampling_seed(),
            self.step * self.cfg.batch if dp is None else dp.steps,
            self.rt.workers,
            self.rt.device.type == "cuda",
            poisson_rate=None if dp is None else dp.sample_rate,
            units=None if dp is None else self.units,
            masks=self.masks,
        )
        return iter(loader)

    def _out_of_time(self, limit: float | None, since: float, base: float) -> bool:
        """Whether the training time (all sessions) has reached `limit`. One process reads its clock after every
        step (a slow step, e.g. 16 s for a 64 px diffusion step on a busy CPU, must not run a budget over by
        `log_every` steps); under DDP rank 0's clock decides for all ranks at log steps (a collective), so they
        stop at the same step."""
        if limit is None or (self.info.world > 1 and self.step % self.cfg.log_every):
            return False
        self.train_seconds = base + time.perf_counter() - since
        over = self.info.main and self.train_seconds >= limit
        if self.info.world == 1:
            return over
        flag = torch.tensor([float(over)], device=self.rt.device)
        return bool(all_reduce_sum(flag, self.info).item() > 0)

    def fit(
        self, resume: dict[str, Any] | None, show_progress: bool, label: str, time_limit_s: float | None = None
    ) -> dict[str, Any]:
        """Train to `cfg.steps` (or until `time_limit_s` of training time, counted over resumed sessions
        too), from scratch or from the checkpoint `resume`; returns `progress(...)` of where it stopped."""
        cfg, info = self.cfg, self.info
        per_step = cfg.batch * info.world  # images per step (expected, with DP's Poisson batches)
        if resume is not None:
            self.load_state(resume)
        since, base = time.perf_counter(), self.train_seconds
        if info.main:
            self.log.truncate(self.step)
        if resume is None:
            self._write_checkpoint()  # step 0: the divergence guard always has a state to return to
        batches = self._batches()
        stop = self._stop_step()
        with step_progress(label, cfg.steps, self.step, show_progress) as bar:
            mark_step, mark_time = self.step, time.perf_counter()
            while self.step < stop:
                real, labels, *units = next(batches)
                if units:  # patient-level DP: the images' patients, for clipping per patient
                    self.objective.units = units[0]  # type: ignore[attr-defined]
                terms = self.train_step(real, labels)
                self.step += 1
                self.images_seen += len(real) * info.world
                self._accumulate(terms)
                out_of_time = self._out_of_time(time_limit_s, since, base)
                last = self.step == stop or out_of_time
                due_log = last or self.step % cfg.log_every == 0
                due_ckpt = last or self.step % cfg.ckpt_every == 0
                due_sample = last or self.step % cfg.sample_every == 0
                if self.dp is not None:  # private: the grid waits for the next checkpoint (see __init__)
                    self._sample_held = self._sample_held or due_sample
                    due_sample = due_ckpt and self._sample_held
                if not (due_log or due_ckpt or due_sample):
                    continue
                totals = all_reduce_sum(self.acc, info)
                means = (totals[0] / totals[1].clamp(min=1)).tolist()
                values = {
                    k: (m if n > 0 else float("nan"))
                    for k, m, n in zip(self.keys, means, totals[1].tolist(), strict=True)
                }
                if self._diverged(totals, values):
                    self._rollback(values)
                    batches, stop = self._batches(), self._stop_step()
                    bar.update(self.step)
                    mark_step, mark_time = self.step, time.perf_counter()
                    continue
                if due_log:
                    rate = (self.step - mark_step) * per_step / max(time.perf_counter() - mark_time, 1e-9)
                    values.update(img_per_s=rate, **self.objective.log_values())
                    if self.dp is not None:
                        self._held_rows.append((self.step, self.images_seen, values))
                    elif info.main:
                        self.log.append(self.step, self.images_seen, values)
                    self.acc.zero_()
                    shown = "  ".join(f"{k} {v:.3f}" for k, v in values.items() if k in self.keys and np.isfinite(v))
                    bar.update(self.step, f"{shown}  {rate:.0f} img/s")
                if due_sample and info.main and self.dp is None:
                    self._save_samples()
                if due_ckpt:
                    self.train_seconds = base + time.perf_counter() - since
                    self._write_checkpoint()
                    self.failures = 0
                if due_sample and self.dp is not None:  # after its checkpoint
                    if info.main:
                        self._save_samples()
                    self._sample_held = False
                bar.update(self.step)
                mark_step, mark_time = self.step, time.perf_counter()
                if out_of_time:
                    break
        return progress(self.state_dict_summary(), cfg.steps, time_limit_s)

    def _stop_step(self) -> int:
        """The step training stops at: `cfg.steps`, or earlier where the next step would overspend the DP budget."""
        if self.dp is None:
            return self.cfg.steps
        return self.step + self.dp.steps_left(self.cfg.steps - self.step)

    def state_dict_summary(self) -> dict[str, Any]:
        """The counters of `state_dict` that say how far training got (cheap: no weights, no collectives)."""
        dp = {"privacy": self.dp.state_dict()} if self.dp is not None else {}
        return {"step": self.step, "images_seen": self.images_seen, "train_seconds": self.train_seconds, **dp}


def dp_units(cfg: TrainConfig, data: TrainData, rows: np.ndarray) -> np.ndarray | None:
    """Each row's patient number under patient-level DP (`--dp-unit patient`), else None (one unit per image)."""
    return data.patients(rows) if cfg.dp_unit == "patient" else None


def dp_patients(units: np.ndarray | None) -> int | None:
    return None if units is None else int(units.max()) + 1


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimiser state the memory format of its parameter (checkpoints store it contiguous)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
