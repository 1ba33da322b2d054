"""`--model twostage` in one command: Stage I (the mask GAN), then Stage II (pix2pix painting images for real
masks), each a `Trainer` of its own; at the end of every session both stages' EMA weights are joined into the
run's generator.

    RUN/masks/{checkpoints,samples,losses.csv,losses.png}    Stage I (samples: drawn masks, one row per group)
    RUN/images/{checkpoints,samples,losses.csv,losses.png}   Stage II (samples: a real mask, its painting, and
                                                             the real image of that mask, per group)
    RUN/generator.safetensors, generator.json                 both stages joined: what `generate` reads

Stage II learns from real masks, so the stages do not depend on each other: `--stage masks` or `--stage
images` trains one alone (in any order, the other later with `--resume --stage ...`), `both` (the default)
trains Stage I and then Stage II. Each checkpoints and resumes exactly like any run (loop.py); a resumed run
continues the stage it was killed in, and once Stage II has started, `both` never trains Stage I again (even
if a resume raises `--steps` or `--time-limit`); only an explicit `--stage masks` does.

Differential privacy (`--dp-epsilon`): both stages read the real training pairs, so both are DP-SGD, with one
privacy account for the run: sigma is calibrated for Stage I's and Stage II's planned steps together, every
noisy step of either stage is counted in it (whichever order the stages run in), and the run's epsilon is the
composition of all of them (train/privacy.py). Stage I is the private GAN rule (its discriminator, the mask
generator by post-processing); Stage II's painter reads each real mask and is pulled towards its real image, so
the painter and its discriminator are both private (`PrivatePaintObjective`).

Budget: Stage I trains `mask_steps` steps (default `steps`) or until it has used `mask_share` (0.5) of
`--time-limit`; Stage II trains `steps` steps or until the rest of the limit (the limit minus Stage I's time)
is spent, so a stage that finishes early leaves its time to the other. Both use the run's learning rates and
`--loss` (ns by default, as pix2pix; hinge also works; LSGAN is not offered, to keep one set of GAN losses).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsyn.data.cache import to_signed
from medsyn.models import GANConfig, save_generator
from medsyn.models.twostage import (
    MaskPainter,
    PairDiscriminator,
    TwoStageGenerator,
    decode_masks,
    encode_masks,
    mask_config,
    twostage_options,
)
from medsyn.train import losses
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.config import TrainConfig
from medsyn.train.data import Group, TrainData
from medsyn.train.distributed import DistInfo, average_buffers
from medsyn.train.dp_objectives import PrivateGANObjective, PrivateRule
from medsyn.train.gan import GANObjective
from medsyn.train.logs import save_grid
from medsyn.train.loop import MAX_SAMPLE_ROWS, SAMPLE_COLUMNS, Trainer, dp_patients, dp_units
from medsyn.train.objective import optimise
from medsyn.train.privacy import DPAccount
from medsyn.train.progress import progress, training_done
from medsyn.train.runtime import Runtime

MASKS_DIR, IMAGES_DIR = "masks", "images"
MASKS_INDEX, IMAGES_INDEX = 1, 2  # seed each stage's weights and data order apart
GRID_GROUPS = 4  # label groups in Stage II's grid (a mask, painted and real row each)


def show_masks(masks: torch.Tensor, values: list[int], channels: int) -> torch.Tensor:
    """uint8 label masks -> grey images in [-1, 1] (background black, the highest label white) for the grids."""
    return (masks.float() * (2.0 / max(values)) - 1.0).expand(-1, channels, -1, -1)


class MaskTrainer(Trainer):
    """Stage I: the shared loop with GANObjective on the mask generator of `mask_config`, fed encoded masks."""

    masks = True

    def __init__(self, cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime,
                 info: DistInfo, model: GANConfig, account: DPAccount | None = None) -> None:  # fmt: skip
        super().__init__(cfg, data, groups, MASKS_INDEX, out, rt, info,
                         objective=lambda c, m, r, i: GANObjective(c, mask_config(m), r, i),
                         private=_private_masks, account=account)  # fmt: skip
        self.gan_cfg = mask_config(model)  # what its checkpoint rebuilds: the mask generator
        self.values, self.channels = list(twostage_options(model)["mask_labels"]), model.channels

    def _inputs(self, real_u8: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's masks, encoded as the mask generator draws them (the images are Stage II's)."""
        dev = self.rt.device
        masks = encode_masks(real_u8[:, self.channels :].to(dev, non_blocking=True), self.values)
        return masks.contiguous(memory_format=self.rt.memory_format), labels.to(dev, non_blocking=True)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """Drawn masks: a row per label group (conditional masks), else as many rows of distinct noise."""
        if self.gan_cfg.name == "cgan":
            return show_masks(decode_masks(super().sample(), self.values), self.values, 1)
        more = torch.Generator().manual_seed(self.cfg.seed + 1)  # rows after the first: their own fixed noise
        extra = torch.randn(SAMPLE_COLUMNS * (min(len(self.groups), MAX_SAMPLE_ROWS) - 1), self.G.z_dim, generator=more)
        with self.rt.autocast():
            drawn = self.G_ema(torch.cat([self.sample_z, extra]).to(self.rt.device), None).float()
        return show_masks(decode_masks(drawn, self.values), self.values, 1)

    def _save_samples(self) -> None:
        if self.gan_cfg.name == "cgan":
            return super()._save_samples()
        grid = self.sample()
        save_grid(grid, ["masks"] * (len(grid) // SAMPLE_COLUMNS), self.out / "samples" / f"step-{self.step:07d}.png")


class PaintObjective(GANObjective):
    """Stage II: pix2pix's update on (mask, image) pairs. D: `PairDiscriminator` on (mask + labels, image), the
    loss of `--loss`; G: `MaskPainter` with that adversarial loss + `l1_weight` x L1 to the real image. With a
    style code (models/twostage.py) each mask is painted with two codes: D sees the first painting, G's
    adversarial loss both, L1 their mean, and `diversity_weight` x min(|p1 - p2| / |z1 - z2|, cap) is
    subtracted (DSGAN). Optimisers, scalers and checkpoint state are GANObjective's."""

    columns: list[str] = []

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo) -> None:
        super().__init__(cfg, model, rt, info)
        opts = twostage_options(model)
        self.style_dim = int(opts["style_dim"])
        self.keys = ["d_loss", "g_loss", "l1", *(["diversity"] if self.style_dim else [])]
        self.l1_weight = float(opts["l1_weight"])
        self.div_weight, self.div_cap = float(opts["diversity_weight"]), float(opts["diversity_cap"])
        self.masks: torch.Tensor | None = None  # the batch's masks, set by PaintTrainer before each step

    @staticmethod
    def build(model: GANConfig) -> tuple[MaskPainter, PairDiscriminator]:
        opts = twostage_options(model)
        painter = MaskPainter(model, opts)  # first: its weights depend only on the seed
        return painter, PairDiscriminator(model, opts, painter.condition_channels)

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One discriminator and one painter update on real images and their masks (`self.masks`)."""
        assert self.masks is not None
        condition = self.G.condition(self.masks, y).contiguous(memory_format=self.rt.memory_format)
        n, k = real.shape[0], 2 if self.style_dim else 1
        z = torch.randn(k * n, self.style_dim, device=real.device)
        with self.rt.autocast():
            fakes = self.G(self.masks.repeat(k, 1, 1, 1), None if y is None else y.repeat(k, 1), z).float()
        first = fakes[:n]
        self.D.requires_grad_(True)
        with self.rt.autocast():
            real_logits, fake_logits = self.D(condition, real), self.D(condition, first.detach())
        loss_d = losses.d_loss(self.cfg.loss, real_logits.float(), fake_logits.float())
        optimise(self.opt_d, self.scaler_d, loss_d, self.D, self.info)
        self.D.requires_grad_(False)
        with self.rt.autocast():
            logits = self.D(condition.repeat(k, 1, 1, 1), fakes)
        adversarial = losses.g_loss(self.cfg.loss, logits.float())
        painted = fakes.view(k, n, *fakes.shape[1:])
        l1 = (painted.mean(dim=0) - real.float()).abs().mean()  # k = 2: first-moment reconstruction (MR-GAN)
        loss_g, out = adversarial + self.l1_weight * l1, {}
        if self.style_dim:
            apart = (painted[0] - painted[1]).abs().flatten(1).mean(1) / (z[:n] - z[n:]).abs().mean(1)
            loss_g = loss_g - self.div_weight * apart.clamp(max=self.div_cap).mean()
            out["diversity"] = apart.mean().detach()
        optimise(self.opt_g, self.scaler_g, loss_g, self.G, self.info)
        average_buffers((self.G, self.D), self.info)
        return {"d_loss": loss_d.detach(), "g_loss": adversarial.detach(), "l1": l1.detach(), **out}

    def log_values(self) -> dict[str, float]:
        return {}


def _private_masks(cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                   pool: torch.Tensor | None) -> PrivateGANObjective:  # fmt: skip
    """Stage I under DP: the private GAN rule on the mask GAN (its label pool only when it is conditional)."""
    masks = mask_config(model)
    return PrivateGANObjective(cfg, masks, rt, info, account, pool if masks.name == "cgan" else None)


class PrivatePaintObjective(PrivateRule, PaintObjective):
    """Stage II under DP-SGD. Each Poisson-sampled pair gives one loss: D's real and painted terms on it plus the
    painter's adversarial and L1 terms on it; the painter's and D's gradients of that loss are clipped apart
    (C / sqrt 2 each, train/privacy.py `parts`) and noised together, one Gaussian mechanism per step. Both are
    computed at the step's weights (a simultaneous update, not pix2pix's alternation: alternating would read the
    same pairs twice per step). The painter's adversarial term goes through a frozen copy of D (`shadow`, not
    hooked), so D's per-pair gradient is its own loss's only. The painter has InstanceNorm (per image) and D
    GroupNorm (`d_norm` group): no layer mixes the pairs of a batch."""

    def __init__(self, cfg: TrainConfig, model: GANConfig, rt: Runtime, info: DistInfo, account: DPAccount,
                 label_pool: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(cfg, model, rt, info)
        self.shadow = copy.deepcopy(self.D).requires_grad_(False)  # before the hooks exist: the copy has none
        pair = nn.ModuleList([self.G, self.D])
        self.make_private(account, pair, "twostage's painter and pair discriminator", rt.device, [self.G, self.D])

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        per_pair, terms, kind = None, {}, self.cfg.loss
        self.private.enable(True)
        if real.shape[0]:
            assert self.masks is not None
            condition = self.G.condition(self.masks, y).contiguous(memory_format=self.rt.memory_format)
            with torch.no_grad():
                torch._foreach_copy_(list(self.shadow.parameters()), list(self.D.parameters()))
            with self.rt.autocast():
                painted = self.G(self.masks, y).float()
                real_logits, fake_logits = self.D(condition, real), self.D(condition, painted.detach())
                logits = self.shadow(condition, painted)
            d_pair = torch.vmap(lambda r, f: losses.d_loss(kind, r, f))(real_logits.float(), fake_logits.float())
            adversarial = torch.vmap(lambda f: losses.g_loss(kind, f))(logits.float())
            l1 = (painted - real.float()).abs().flatten(1).mean(1)
            per_pair = d_pair + adversarial + self.l1_weight * l1
            terms = {"d_loss": d_pair.mean().detach(), "g_loss": adversarial.mean().detach(), "l1": l1.mean().detach()}
        self.private.step(per_pair, [self.opt_g, self.opt_d], units=self.units)
        self.guard.record([self.G, self.D], [])
        return terms


class PaintTrainer(Trainer):
    """Stage II: the shared loop with PaintObjective; its grid paints fixed real training masks."""

    masks = True

    def __init__(self, cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime,
                 info: DistInfo, model: GANConfig, account: DPAccount | None = None) -> None:  # fmt: skip
        super().__init__(cfg, data, groups, IMAGES_INDEX, out, rt, info, objective=PaintObjective,
                         private=PrivatePaintObjective, account=account)  # fmt: skip
        self.values, self.channels = list(twostage_options(model)["mask_labels"]), model.channels
        shown = [g for g in groups if len(data.group_rows(g))][:GRID_GROUPS]
        self.grid_names = [name for g in shown for name in (f"{g.name} mask", "painted", "real")]
        rows = np.concatenate([np.resize(data.group_rows(g), SAMPLE_COLUMNS) for g in shown])
        self.grid = (torch.from_numpy(np.stack([data.cache.images[r] for r in rows])),
                     torch.from_numpy(data.cache.masks_for(rows)), torch.from_numpy(data.labels[rows]))  # fmt: skip

    def _inputs(self, real_u8: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's images in [-1, 1]; their masks go to the objective beside them."""
        batch = real_u8.to(self.rt.device, non_blocking=True)
        assert isinstance(self.objective, PaintObjective)
        self.objective.masks = batch[:, self.channels :]
        real = to_signed(batch[:, : self.channels]).contiguous(memory_format=self.rt.memory_format)
        return real, labels.to(self.rt.device, non_blocking=True)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """Each group's masks painted with the run's fixed style codes (one per column)."""
        images, masks, labels = (t.to(self.rt.device) for t in self.grid)
        style = self.sample_z.repeat(len(masks) // SAMPLE_COLUMNS, 1).to(self.rt.device)
        with self.rt.autocast():
            painted = self.G_ema(masks, labels, style).float()
        rows = [show_masks(masks, self.values, self.channels), painted, to_signed(images)]
        per_row = [r.reshape(-1, SAMPLE_COLUMNS, *r.shape[1:]) for r in rows]
        return torch.stack(per_row, dim=1).reshape(-1, *painted.shape[1:])

    def _save_samples(self) -> None:
        save_grid(self.sample(), self.grid_names, self.out / "samples" / f"step-{self.step:07d}.png")


def stage_config(cfg: TrainConfig, model: GANConfig) -> tuple[TrainConfig, float | None]:
    """Stage I's config (its step count) and time limit (module docstring)."""
    opts = twostage_options(model)
    limit = None if cfg.time_limit_s is None else cfg.time_limit_s * float(opts["mask_share"])
    return replace(cfg, steps=int(opts["mask_steps"] or cfg.steps)), limit


def _last(folder: Path) -> dict[str, Any] | None:
    """The stage's last checkpoint, None when it never started."""
    return load_checkpoint(checkpoint_file(folder / "checkpoints")) if (folder / "checkpoints").is_dir() else None


def train_twostage(
    cfg: TrainConfig, data: TrainData, groups: list[Group], out: Path, rt: Runtime, info: DistInfo, resume: bool,
    show_progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """The stages `cfg.stage` asks for (each resumed where it stopped), then the joined generator; returns
    run.json's `progress`: Stage II's steps and stop reason (Stage I's when Stage II never ran), the run's
    whole training time, and each stage's own under 'stages'."""
    model = data.model_config(cfg)
    stage = cfg.stage or "both"
    mask_cfg, mask_limit = stage_config(cfg, model)
    m_state, i_state = (_last(out / MASKS_DIR), _last(out / IMAGES_DIR)) if resume else (None, None)
    account = _shared_account(cfg, mask_cfg, data, (m_state, i_state))
    wanted = stage == "masks" or (stage == "both" and i_state is None)  # both: never back to Stage I
    if wanted and (m_state is None or not training_done(m_state, mask_cfg.steps, mask_limit)):
        trainer: Trainer = MaskTrainer(mask_cfg, data, groups, out / MASKS_DIR, rt, info, model, account)
        trainer.fit(m_state, show_progress, label="twostage masks", time_limit_s=mask_limit)
        del trainer
        m_state = _last(out / MASKS_DIR)
    m_seconds = float(m_state["train_seconds"]) if m_state is not None else 0.0
    limit = None if cfg.time_limit_s is None else max(cfg.time_limit_s - m_seconds, 0.0)
    if stage != "masks" and (i_state is None or not training_done(i_state, cfg.steps, limit)):
        trainer = PaintTrainer(cfg, data, groups, out / IMAGES_DIR, rt, info, model, account)
        trainer.fit(i_state, show_progress, label="twostage images", time_limit_s=limit)
        del trainer
        i_state = _last(out / IMAGES_DIR)
    if info.main:
        _save_joined(model, m_state, i_state, out)
    planned = (("masks", m_state, mask_cfg.steps, mask_limit), ("images", i_state, cfg.steps, limit))
    stages = [
        {"stage": name, **progress(state, steps, lim)} for name, state, steps, lim in planned if state is not None
    ]
    total = round(sum(s["train_seconds"] for s in stages), 3)
    reached = {**{k: v for k, v in stages[-1].items() if k != "stage"}, "train_seconds": total, "stages": stages}
    if account is not None:  # the whole run's: the account after the stage that ran last
        reached["privacy"] = max((s["privacy"] for s in stages), key=lambda p: int(p["steps"]))
    return reached


def _shared_account(cfg: TrainConfig, mask_cfg: TrainConfig, data: TrainData,
                    states: tuple[dict[str, Any] | None, ...]) -> DPAccount | None:  # fmt: skip
    """Under `--dp-epsilon`, the run's one privacy account: calibrated for both stages' planned steps, continued
    from whichever stage's checkpoint has counted the most steps (None without DP)."""
    if cfg.dp_epsilon is None:
        return None
    units = dp_units(cfg, data, data.rows)
    account = DPAccount.for_run(replace(cfg, steps=mask_cfg.steps + cfg.steps), len(data.rows), dp_patients(units))
    done = [s["privacy"] for s in states if s is not None and "privacy" in s]
    if done:
        account.load_state_dict(max(done, key=lambda p: int(p["steps"])))
    return account


def _save_joined(model: GANConfig, masks: dict[str, Any] | None, images: dict[str, Any] | None, out: Path) -> None:
    """RUN/generator.safetensors: Stage I's and Stage II's EMA weights in one TwoStageGenerator; `trained` says
    which stages it has (`generate` refuses to draw with an untrained one)."""
    with torch.random.fork_rng(devices=[]):
        G = TwoStageGenerator(model)
    for i, (part, state) in enumerate(((G.masks, masks), (G.painter, images))):
        if state is not None:
            part.load_state_dict(state["G_ema"])
            G.trained.data[i] = 1.0
    save_generator(G, out)
