"""Model-based membership inference: the attack reads the trained generator's run folder (`evaluate --run`).

* GANs: the discriminator's score D(x, y) (Hayes et al. 2019, LOGAN's white-box attack): a discriminator
  that has memorised its training images scores them higher than unseen ones. The discriminator is not part
  of what is shared (generate exports the generator only), so this measures whether TRAINING memorised
  members, the signal the generator learns from; the verdict caps it at WARN for that reason.
* Diffusion models (ddpm, ldm): the denoising loss at a few fixed timesteps with fixed noise (Carlini et al.
  2023, the loss threshold attack; Matsumoto et al. 2023): a denoiser predicts the noise it was trained on
  better for its training images. The denoiser IS the shared generator, so this is a full check.
* twostage: the painter's reconstruction loss, L1 between a real image and the image painted from its own
  mask (the loss the painter was trained on, so the same loss-threshold attack; a painter with a style code is
  scored on its mean painting over a few fixed codes, which is what its L1 term fits); image + mask pairs only.
  The painter is part of the shared generator, so this is a full check.

Members are the training images the generator saw and non-members the held-out patients' images, as for
the other attacks; a per-class (unconditional) run scores each image with the models of its label groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsyn.data.cache import PreparedDataset, to_signed
from medsyn.errors import DataError, MedsynError
from medsyn.evaluate.privacy.membership import MIA_MIN_IMAGES, MIAResult, attack_result
from medsyn.generate.core import GeneratorFile, generator_files
from medsyn.models import MODELS, GANConfig
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.registry import build_gan
from medsyn.train.checkpoint import load_checkpoint

TIMESTEP_FRACTIONS = (0.02, 0.05, 0.1, 0.2)  # of the T training timesteps: where a denoiser's fit to members shows
NOISE_DRAWS = 2  # fixed noise draws per timestep (the same for every image's rank in its batch)
STYLE_DRAWS = 4  # fixed style codes per mask for a painter with appearance noise
MAX_IMAGES = 2000  # per side (a seeded subsample above this: every image costs forward passes)
BATCH = 64


@dataclass(frozen=True)
class AttackSet:
    """Real images to score: rows of the prepared cache and their patient ids."""

    rows: np.ndarray
    patient_ids: np.ndarray


def model_inference(
    run: str | Path,
    ds: PreparedDataset,
    members: AttackSet,
    non_members: AttackSet,
    *,
    drawn: list[str] | None = None,
    device: str = "cpu",
    max_images: int = MAX_IMAGES,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> MIAResult:
    """AUROC of telling members from non-members by the trained model's own score of each real image.

    `drawn`: the synthetic set's generator hashes (its manifest); when the run's weights differ (trained
    further after drawing) the result says so. DataError when the run cannot be attacked on this data.
    """
    try:
        meta, files = generator_files(run)
    except MedsynError as exc:
        raise DataError(f"model-based membership inference: {exc}") from None
    model = str(meta["model"])
    painter = MODELS[model].masks  # twostage: the painter's reconstruction of each real image from its own mask
    if painter:
        members, non_members = (_with_masks(ds, s) for s in (members, non_members))
    classes, cfg = list(meta["labels"]["classes"]), meta["config"]
    missing = [c for c in classes if c not in ds.classes]
    if missing:
        raise DataError(f"model-based membership inference: the run's classes {missing} are not in the real data")
    if int(cfg["size"]) != ds.size:
        raise DataError(f"model-based membership inference: the generator trained on {cfg['size']} px images, the "
                        f"evaluation runs at {ds.size} px; evaluate at the generator's size (--size {cfg['size']})")  # fmt: skip
    cols = [ds.classes.index(c) for c in classes]
    rng = np.random.default_rng(seed)
    (m_rows, m_ids), (n_rows, n_ids) = (_cap(s, max_images, rng) for s in (members, non_members))
    notes = [f"{n} of {len(s.rows)} {name} scored (a seeded subsample)"
             for s, name, n in ((members, "members", len(m_rows)), (non_members, "non-members", len(n_rows)))
             if len(s.rows) > n]  # fmt: skip
    dev = torch.device(device)
    family = MODELS[model].family
    scorers = [(_group_of(meta, f.group), _scorer(f, "painter" if painter else family, ds.channels, dev, seed))
               for f in files]  # fmt: skip
    scored = [_score(ds, rows, cols, scorers, dev, painter) for rows in (m_rows, n_rows)]
    (s_mem, keep_m), (s_non, keep_n) = scored
    if (~keep_n).any():
        notes.append(f"{int((~keep_n).sum())} non-members belong to no trained label group and are left out")
    if keep_m.sum() < MIA_MIN_IMAGES or keep_n.sum() < MIA_MIN_IMAGES:
        raise DataError(f"model-based membership inference needs at least {MIA_MIN_IMAGES} members and non-members, "
                        f"got {int(keep_m.sum())} and {int(keep_n.sum())}")  # fmt: skip
    if drawn is not None and drawn != [f.sha256() for f in files]:
        notes.append("the run's weights are not the ones that drew the synthetic set (trained further since?): "
                     "this attacks the run as it is now")  # fmt: skip
    attack, score = ATTACKS["painter" if painter else family]
    return attack_result(
        s_mem[keep_m], s_non[keep_n], attack=attack, score=score,
        space=f"{model} run", implementation=f"medsyn {model} checkpoint", n_synthetic=0,
        member_ids=m_ids[keep_m], non_member_ids=n_ids[keep_n], n_bootstrap=n_bootstrap, level=level, seed=seed,
        notes=notes,
    )  # fmt: skip


def _cap(s: AttackSet, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(s.rows) <= n:
        return s.rows, s.patient_ids
    keep = np.sort(rng.choice(len(s.rows), n, replace=False))
    return s.rows[keep], s.patient_ids[keep]


def _group_of(meta: dict[str, Any], name: str) -> tuple[float, ...] | None:
    """The label of a per-class generator's group (None: a conditional run, one model for every image)."""
    if meta["conditional"]:
        return None
    return next(tuple(g["label"]) for g in meta["groups"] if g["name"] == name)


def _with_masks(ds: PreparedDataset, s: AttackSet) -> AttackSet:
    """The images of `s` that have a mask (the painter is scored on image + mask pairs)."""
    keep = np.isin(s.rows, ds.mask_rows()) if ds.has_masks else np.zeros(len(s.rows), bool)
    return AttackSet(s.rows[keep], s.patient_ids[keep])


ATTACKS = {  # family -> (attack name, what the score is)
    "gan": ("discriminator", "discriminator logit D(x, y)"),
    "diffusion": ("denoising loss", "-denoising loss at t = " + ", ".join(f"{f:g}T" for f in TIMESTEP_FRACTIONS)
                  + f" ({NOISE_DRAWS} fixed noise draws)"),
    "painter": ("reconstruction loss", "-L1 between a real image and the image painted from its own mask"),
}  # fmt: skip

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(x in [-1, 1], multi-hot y, uint8 masks or None) -> score per image."""


def _scorer(f: GeneratorFile, family: str, channels: int, dev: torch.device, seed: int) -> Scorer:
    """The model's score of real images: the discriminator's logit, or minus the denoising loss."""
    if family == "gan":
        if not f.path.name.endswith(".pt"):
            raise DataError(f"model-based membership inference: {f.path.parent} is an exported generator without its "
                            "discriminator; give the training run folder")  # fmt: skip
        ck = load_checkpoint(f.path)
        with torch.random.fork_rng(devices=[]):
            _, D = build_gan(GANConfig.from_dict(ck["model"]))
        D.load_state_dict(ck["D"])
        D = _on(D, channels, dev)
        return lambda x, y, _: D(x, y if D.conditional else None)[0].float()
    if family == "painter":  # the painter is the shared generator, trained with L1 to its training images
        P = _on(f.load(), channels, dev)
        draws = STYLE_DRAWS if P.painter.z_dim else 1

        def reconstruction(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            """-L1 to the mean painting over fixed style codes: what the painter's L1 term fits (models/twostage)."""
            z = torch.randn(draws, len(x), P.z_dim, generator=torch.Generator().manual_seed(seed)).to(x.device)
            mean = torch.stack([P.paint(m, y, z[k]).float() for k in range(draws)]).mean(dim=0)
            return -(mean - x).abs().flatten(1).mean(dim=1)

        return reconstruction
    G = _on(f.load(), channels, dev)
    assert isinstance(G, DiffusionGenerator)
    T = G.train_scheduler.num_train_timesteps
    steps = [max(1, round(frac * T)) for frac in TIMESTEP_FRACTIONS]

    def denoising(x: torch.Tensor, y: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        y_in = y if G.conditional else None
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # the same noise for every batch: images are compared on equal draws
            losses = []
            for _ in range(NOISE_DRAWS):
                noise = G.draw(x, False)[1]
                for t in steps:
                    ts = torch.full((len(x),), t, device=x.device, dtype=torch.long)
                    losses.append(G.loss(x, y_in, per_sample=True, draws=(None, noise, ts)))
        return -torch.stack(losses).mean(dim=0)

    return denoising


def _on(net: Any, channels: int, dev: torch.device) -> Any:
    if net.cfg.channels != channels:
        raise DataError(f"model-based membership inference: the generator makes {net.cfg.channels}-channel images, "
                        f"the real data has {channels}")  # fmt: skip
    return net.to(dev).eval()


@torch.no_grad()
def _score(
    ds: PreparedDataset, rows: np.ndarray, cols: list[int], scorers: list[tuple[tuple[float, ...] | None, Scorer]],
    dev: torch.device, masks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's score (mean over the models of its label groups) and whether any model covers it."""
    pos = np.nan_to_num(ds.labels[rows][:, cols], nan=0.0) > 0
    total, count = np.zeros(len(rows)), np.zeros(len(rows))
    for label, score in scorers:
        use = np.ones(len(rows), bool) if label is None else _in_group(pos, label)
        for idx in _batches(np.flatnonzero(use)):
            x = to_signed(torch.from_numpy(np.asarray(ds.images[rows[idx]])).to(dev))
            y = torch.from_numpy(pos[idx].astype(np.float32)).to(dev)
            m = torch.from_numpy(ds.masks_for(rows[idx])).to(dev) if masks else None
            total[idx] += score(x, y, m).cpu().double().numpy()
            count[idx] += 1
    keep = count > 0
    return np.where(keep, total / np.maximum(count, 1), 0.0), keep


def _in_group(pos: np.ndarray, label: tuple[float, ...]) -> np.ndarray:
    """Images a per-class generator trained on: positives of its class, or (negative group) no positive label."""
    return pos[:, label.index(1.0)] if any(label) else ~pos.any(axis=1)


def _batches(idx: np.ndarray) -> Iterator[np.ndarray]:
    for i in range(0, len(idx), BATCH):
        yield idx[i : i + BATCH]
