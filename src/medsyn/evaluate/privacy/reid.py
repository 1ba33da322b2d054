"""Patient re-identification (linkage) attack on synthetic images, after Packhäuser et al. 2022.

A siamese verification network decides whether two radiographs show the same patient. It is trained on
same/different-patient pairs of the REAL training split, checked on pairs of held-out patients it never
saw, and then asked, for every synthetic image, which training patient it resembles most. A synthetic
image scoring above a threshold chosen on held-out real data is "linked" to that training patient.

    model = train_reid(train_x, train_pids, ReidConfig(epochs=10))
    ver = verification_auroc(model, test_x, test_pids)           # AUROC + CI, thresholds at 1% / 5% FPR
    res = match_synthetic(model, synth_x, train_x, train_pids, ver, heldout_images=test_x)

Thresholds: the pair-level threshold (FPR on single held-out pairs) is what the paper uses, but taking
the best of many gallery images raises the chance that an unrelated image crosses it. `match_synthetic`
therefore also reports, when given held-out real images, how often images of unseen patients cross the
same threshold (the false-link baseline), and gallery-calibrated thresholds at which only 1% / 5% of
them do. Report the synthetic fraction next to that baseline.

    save_reid(model, "models/reid")                  # safetensors weights + reid.json, no pickle
    model = load_reid("models/reid", device="cpu")   # .embed(images), .best_match(query_emb, gallery_emb)

A saved model keeps only the NUMBER of its training patients, never their ids: a model folder is meant to
travel with synthetic data, and patient ids are patient metadata (a salted hash would not protect them:
with the salt beside it, anyone can hash the known id range of a public dataset and read off the training
split). A loaded model therefore cannot refuse its own training patients in `verification_auroc`, which
says so in the result's notes.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsyn.errors import CheckpointError, ConfigError, DataError, MedsynError
from medsyn.evaluate.classifier import autocast, light_augment, to_device
from medsyn.evaluate.config import coerce_config
from medsyn.evaluate.data import batches, check_images, check_patient_ids
from medsyn.evaluate.privacy.verification import check_disjoint, check_pairs_possible, verification_auroc
from medsyn.models.classifiers import (
    Classifier,
    build_classifier,
    check_device,
    load_weights,
    read_model_folder,
    rebuild_classifier,
    save_model_folder,
)
from medsyn.progress import progress_bar
from medsyn.seed import seed_everything

#: Pair heads. "cosine": logit = s * (cos(e1, e2) - t) on a learned projection e of the encoder features;
#: it is largest for identical images, so a near-copy of a training image always scores at least as high
#: as any other image of that patient -- what a linkage attack must guarantee.
#: "absdiff" / "absdiff+product": an MLP on |f1-f2| (and f1*f2), as in Packhäuser et al. 2022; more
#: flexible, but nothing makes identical images score highest (the product term rewards busy images).
HEADS = ("cosine", "absdiff", "absdiff+product")


class CosineHead(nn.Module):
    """Unit-length projection of the features; pair logit = scale * (e1 . e2 - offset), both learned."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(feature_dim, embed_dim)
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.offset = nn.Parameter(torch.tensor(0.5))
        self.embed_dim = embed_dim

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(f), dim=-1)

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        return self.scale * ((ea * eb).sum(-1) - self.offset)


class MLPHead(nn.Module):
    """MLP on |f1 - f2| (and f1 * f2 when `product`), on the raw encoder features."""

    def __init__(self, feature_dim: int, hidden: int, product: bool) -> None:
        super().__init__()
        self.product, self.embed_dim = product, feature_dim
        in_dim = 2 * feature_dim if product else feature_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        parts = [(ea - eb).abs()] + ([ea * eb] if self.product else [])
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


@dataclass
class ReidConfig:
    """Training settings of the verification network."""

    encoder: str = "smallcnn"  # or "densenet121"
    head: str = "cosine"  # see HEADS
    embed_dim: int = 128  # cosine head: projection size
    hidden: int = 64  # MLP heads: hidden units
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_pairs: int = 32  # pairs per step, half same-patient, half different-patient
    lr: float = 1e-3
    weight_decay: float = 1e-5
    augment: bool = True
    patience: int = 3  # only used when validation patients are given
    seed: int = 0
    device: str = "cpu"
    embed_batch_size: int = 256
    chunk_mb: int = 128  # memory bound for one block of pair scoring
    progress: bool = False
    amp: bool = True  # bfloat16 autocast on a CUDA device (ignored on a CPU)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"reid.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for key in (
            "embed_dim",
            "hidden",
            "epochs",
            "steps_per_epoch",
            "patience",
            "embed_batch_size",
            "chunk_mb",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"reid.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.batch_pairs < 2 or not self.lr > 0:
            raise ConfigError(f"reid.batch_pairs must be >= 2 and lr > 0, got {self.batch_pairs}, {self.lr}")


class ReidModel(nn.Module):
    """Shared encoder + pair head -> same-patient logit (symmetric in the two images).

    After `train_reid`: `train_patients` (ids seen in training, to refuse them at verification time),
    `history` (per-epoch loss / val AUROC) and `cfg`. After `load_reid`: `train_patients` is empty and
    `train_patients_known` False (ids are not stored; see the module docstring).
    """

    def __init__(self, encoder: Classifier, cfg: ReidConfig) -> None:
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        d = encoder.feature_dim
        self.head: CosineHead | MLPHead = (
            CosineHead(d, cfg.embed_dim) if cfg.head == "cosine"
            else MLPHead(d, cfg.hidden, product=cfg.head == "absdiff+product")
        )  # fmt: skip
        self.train_patients: frozenset[str] = frozenset()
        self.train_patients_known = True  # False after load_reid: the disjointness check cannot run
        self.history: dict[str, Any] = {}

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, S, S) in [0, 1] -> the embeddings the head compares."""
        return self.head.embed(self.encoder(x))

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        e = self.embedding(torch.cat([xa, xb]))
        return self.head(e[: len(xa)], e[len(xa) :])

    @torch.no_grad()
    def embed(self, images: Any) -> torch.Tensor:
        """Embeddings (N, E) of all images, computed once in batches (eval mode)."""
        images = check_images(images)
        device = next(self.parameters()).device
        self.eval()
        with autocast(device, self.cfg.amp):
            parts = [self.embedding(to_device(images[idx], device)) for idx in batches(len(images), self.cfg.embed_batch_size)]
        return torch.cat(parts).float()

    def _block(self) -> int:
        """Pairs per scoring block so that one block stays under `chunk_mb`."""
        per_pair = 4 * (4 * self.head.embed_dim + self.cfg.hidden)
        return max(1, self.cfg.chunk_mb * 2**20 // per_pair)

    @torch.no_grad()
    def score_pairs(self, emb: torch.Tensor, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """Logits of pairs (emb[ia[j]], emb[ib[j]]), in blocks."""
        self.eval()
        out = [
            self.head(emb[ia[s]], emb[ib[s]]).double().cpu().numpy()
            for s in (slice(i, i + self._block()) for i in range(0, len(ia), self._block()))
        ]
        return np.concatenate(out) if out else np.zeros(0)

    @torch.no_grad()
    def best_match(self, query: torch.Tensor, gallery: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """For each query embedding, the highest logit over all gallery embeddings and its gallery index.

        The cosine head's logit is scale * (q . g - offset): the whole gallery is scored by one matrix
        product per block of queries. The MLP heads need every pair through the MLP, block by block.
        """
        self.eval()
        if isinstance(self.head, CosineHead):
            qb = max(1, self.cfg.chunk_mb * 2**20 // (8 * len(gallery)))
            parts = [(self.head.scale * (query[q0 : q0 + qb] @ gallery.T - self.head.offset)).double().max(dim=1)
                     for q0 in range(0, len(query), qb)]  # fmt: skip
            return (torch.cat([p.values for p in parts]).cpu().numpy(),
                    torch.cat([p.indices for p in parts]).cpu().numpy())  # fmt: skip
        gb = min(len(gallery), self._block())
        qb = max(1, self._block() // gb)
        best = torch.full((len(query),), -math.inf, dtype=torch.float64)
        arg = torch.zeros(len(query), dtype=torch.long)
        for q0 in range(0, len(query), qb):
            fq = query[q0 : q0 + qb]
            for g0 in range(0, len(gallery), gb):
                fg = gallery[g0 : g0 + gb]
                s = self.head(fq[:, None, :].expand(-1, len(fg), -1), fg[None, :, :].expand(len(fq), -1, -1))
                value, index = s.double().cpu().max(dim=1)
                better = value > best[q0 : q0 + qb]
                best[q0 : q0 + qb][better] = value[better]
                arg[q0 : q0 + qb][better] = index[better] + g0
        return best.numpy(), arg.numpy()


def train_reid(
    images: Any,
    patient_ids: Sequence[Any],
    cfg: ReidConfig | Mapping[str, Any] | None = None,
    *,
    val_images: Any = None,
    val_patient_ids: Sequence[Any] | None = None,
) -> ReidModel:
    """Train the verification network on balanced same/different-patient pairs of the training split.

    With validation images (other patients), keeps the epoch with the best validation AUROC
    (early stopping); otherwise trains all epochs.
    """
    cfg = coerce_config(ReidConfig, cfg)
    images = check_images(images, "re-id training images")
    ids = check_patient_ids(patient_ids, len(images), "re-id training")
    assert ids is not None
    sampler = check_pairs_possible(ids, "re-identification training", cfg.seed)
    if val_images is not None:
        val_images = check_images(val_images, "re-id validation images")
        val_ids = check_patient_ids(val_patient_ids, len(val_images), "re-id validation")
        if val_ids is None:
            raise DataError("re-id validation images need patient ids")
        check_disjoint(ids, val_ids, "re-id validation")
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    encoder = build_classifier(cfg.encoder, images.shape[1], 0, images.shape[2])
    model = ReidModel(encoder, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_pos = cfg.batch_pairs // 2
    target = torch.cat([torch.ones(n_pos), torch.zeros(cfg.batch_pairs - n_pos)]).to(device)
    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_state, waited = -math.inf, cfg.epochs, None, 0
    with progress_bar("re-id", cfg.epochs * cfg.steps_per_epoch, quiet=not cfg.progress) as advance:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total = 0.0
            for _ in range(cfg.steps_per_epoch):
                pa, pb = sampler.positives(n_pos)
                na, nb = sampler.negatives(cfg.batch_pairs - n_pos)
                x = to_device(images[np.concatenate([pa, na, pb, nb])], device)
                x = light_augment(x, gen) if cfg.augment else x
                with autocast(device, cfg.amp):
                    e = model.embedding(x)
                    logits = model.head(e[: len(e) // 2], e[len(e) // 2 :])
                loss = F.binary_cross_entropy_with_logits(logits.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                advance(1)
            row: dict[str, Any] = {"epoch": epoch, "train_loss": total / cfg.steps_per_epoch}
            if val_images is not None:
                auc = verification_auroc(model, val_images, val_ids, n_bootstrap=0)["auroc"]
                row["val_auroc"] = auc
                if auc > best_auc:
                    best_auc, best_epoch, waited = auc, epoch, 0
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                else:
                    waited += 1
            history.append(row)
            if val_images is not None and waited >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.train_patients = frozenset(ids.tolist())
    model.history = {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val_auroc": best_auc if best_state is not None else None,
        "n_images": len(images),
        "n_patients": sampler.n_patients,
        "n_patients_with_pairs": len(sampler.multi),
        "pairs_seen": len(history) * cfg.steps_per_epoch * cfg.batch_pairs,
        "config": asdict(cfg),
    }
    return model


REID_FORMAT = "medsyn-reid"


def save_reid(model: ReidModel, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write folder/reid.safetensors + reid.json (ReidConfig, encoder architecture, training history, the
    number of training patients, medsyn version, `extra`); returns `folder`. Patient ids are NOT written."""
    if not isinstance(model, ReidModel) or not isinstance(getattr(model.encoder, "arch", None), dict):
        raise ConfigError(f"save_reid takes a ReidModel from train_reid or load_reid, got {type(model).__name__}")
    meta = {
        "config": asdict(model.cfg),
        "encoder": model.encoder.arch,
        "history": {k: v for k, v in model.history.items() if k != "config"},
        "n_train_patients": len(model.train_patients) if model.train_patients else model.history.get("n_patients"),
        "train_patients": "not stored (patient metadata); only their number",
    }  # fmt: skip
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ConfigError(f"save_reid: extra may not set {clash}; they are written by medsyn")
    return save_model_folder(model, folder, "reid", REID_FORMAT, {**meta, **(extra or {})})


def load_reid(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> ReidModel:
    """The re-identification model saved in `folder` (eval mode, on `device`); `.meta` holds the stored
    description. Missing or corrupt files: a one-line CheckpointError.

    `train_patients` is empty and `train_patients_known` False: the ids were never saved, so
    `verification_auroc` cannot refuse the model's own training patients; it notes this in its result.
    Use patients outside the model's training split (e.g. another dataset's, or the test split).
    """
    dev = check_device(device)
    meta, tensors, file = read_model_folder(folder, "reid", REID_FORMAT)
    try:
        trained_with = coerce_config(ReidConfig, meta.get("config"))
    except (MedsynError, TypeError) as exc:
        raise CheckpointError(f"{file}: stored re-id config is invalid ({exc})") from None
    cfg = replace(trained_with, device=str(dev), progress=False)
    encoder = rebuild_classifier(meta.get("encoder"), file)
    with torch.random.fork_rng(devices=[]):
        model = ReidModel(encoder, cfg)
    load_weights(model, tensors, file)
    model.train_patients_known = False
    model.history = {**dict(meta.get("history") or {}), "config": asdict(trained_with)}
    model.meta = meta
    return model.to(dev).eval()
