"""The classifier loop behind every utility setting: masked BCE, light augmentation, early stopping on real val.

    model, info = train_classifier(train_images, train_labels, val_images, val_labels, ClassifierConfig(epochs=10))
    logits = predict_logits(model, test_images)

Batches are read from (possibly memory-mapped) arrays batch by batch, by DataLoader workers when
`workers > 0`, moved to the device as uint8 (4x less traffic than float) and augmented there. On a GPU the
forward and backward passes run under bfloat16 autocast (`amp`), which needs no loss scaling; on a CPU
everything stays float32, so CPU results do not depend on these settings.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.config import check_positive, coerce_config
from medsyn.evaluate.data import LabeledImages, as_unit_tensor, batches, check_images
from medsyn.evaluate.stats import mean_auroc
from medsyn.models.classifiers import Classifier, build_classifier
from medsyn.progress import progress_bar
from medsyn.seed import seed_everything


@dataclass
class ClassifierConfig:
    """Training settings of one utility classifier."""

    model: str = "smallcnn"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 5  # epochs without a better mean val AUROC before stopping
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 256
    progress: bool = False
    workers: int = 0  # DataLoader worker processes reading batches from the memmap (0: in this process)
    amp: bool = True  # bfloat16 autocast on a CUDA device (ignored on a CPU)

    def __post_init__(self) -> None:
        check_positive(
            "classifier",
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            eval_batch_size=self.eval_batch_size,
        )
        if self.batch_size < 2:
            raise ConfigError(f"classifier.batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"classifier.workers must be >= 0, got {self.workers}")


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when asked for (and supported); a no-op elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch as float in [0, 1] on `device`; uint8 crosses to the device before it is widened."""
    if batch.dtype == np.uint8 and device.type != "cpu":
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True).float().div_(255.0)
    return as_unit_tensor(batch).to(device)


class _Batches(Dataset):
    """Batch i of `order` read from `images`: lets DataLoader workers read the memmap while the device trains."""

    def __init__(self, images: Any, order: np.ndarray, size: int) -> None:
        self.images, self.order, self.size = images, order, size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[i * self.size : (i + 1) * self.size]
        return np.asarray(self.images[idx]), idx


def read_batches(
    images: Any, order: np.ndarray, size: int, workers: int, pin: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images[idx], idx) for consecutive batches of `order`; in worker processes when `workers > 0`."""
    data = _Batches(images, order, size)
    if workers == 0:
        yield from (data[i] for i in range(len(data)))
        return
    yield from DataLoader(data, batch_size=None, num_workers=workers, pin_memory=pin, prefetch_factor=4,
                          collate_fn=_as_read)  # fmt: skip


def _as_read(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the worker's numpy batch as it is (the default would turn it into a tensor before `to_device`)."""
    return batch


def light_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation (+-5 deg), scale (+-5%), shift (+-4%), brightness/contrast (+-10%), on x's device.

    The random parameters come from the CPU generator `gen` (the same draws on every device); the image
    work runs where `x` is. No flips: left/right is anatomical in chest radiographs (heart side).
    """
    n = x.shape[0]
    r = torch.rand(n, 6, generator=gen) * 2 - 1
    angle, scale = r[:, 0] * math.radians(5), 1 + 0.05 * r[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 0.08 * r[:, 2]], 1), torch.stack([sin, cos, 0.08 * r[:, 3]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast, brightness = (1 + 0.1 * r[:, 4]).to(x), (0.1 * r[:, 5]).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]).clamp_(0, 1)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean BCE over the non-NaN labels only, and how many there were (0 -> the loss is a constant 0)."""
    mask = ~torch.isnan(labels)
    target = torch.where(mask, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    n = int(mask.sum())
    return (loss * mask).sum() / max(n, 1), n


@torch.no_grad()
def predict_logits(model: nn.Module, images: Any, batch_size: int = 256, amp: bool = True) -> np.ndarray:
    """Logits (N, K) as float64, in batches. Not probabilities: float32 sigmoid saturates into ties."""
    images = check_images(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with autocast(device, amp):
        out = [model(to_device(images[idx], device)).double().cpu().numpy() for idx in batches(len(images), batch_size)]
    model.train(was_training)
    return np.concatenate(out)


def train_classifier(
    train_images: Any,
    train_labels: np.ndarray,
    val_images: Any,
    val_labels: np.ndarray,
    cfg: ClassifierConfig | Mapping[str, Any] | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train with masked BCE + Adam; early stopping on mean val AUROC; returns the BEST epoch's model.

    Batches are read from the (possibly memory-mapped) arrays one at a time, so memory stays bounded.
    """
    cfg = coerce_config(ClassifierConfig, cfg)
    train = LabeledImages(train_images, train_labels, name="train")
    val = LabeledImages(val_images, val_labels, name="val")
    k = train.labels.shape[1]
    if val.labels.shape[1] != k or val.images.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f"train and val differ: images {train.images.shape[1:]} vs {val.images.shape[1:]}, "
            f"{k} vs {val.labels.shape[1]} classes"
        )
    if math.isnan(mean_auroc(np.zeros(val.labels.shape), val.labels)):
        raise DataError(
            "validation split has no class with both positive and negative labels: "
            "early stopping on AUROC is impossible"
        )
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    channels, size = train.images.shape[1], train.images.shape[2]
    model = build_classifier(cfg.model, channels, k, size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_state, waited = -math.inf, 0, None, 0
    n_steps = math.ceil(len(train) / cfg.batch_size)
    pin = device.type == "cuda"
    with progress_bar(f"{cfg.model} seed {cfg.seed}", cfg.epochs * n_steps, quiet=not cfg.progress) as advance:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total, count = 0.0, 0
            order = rng.permutation(len(train))
            for raw, idx in read_batches(train.images, order, cfg.batch_size, cfg.workers, pin):
                advance(1)
                if len(idx) < 2:  # batch norm cannot train on one image
                    continue
                x = to_device(raw, device)
                x = light_augment(x, gen) if cfg.augment else x
                with autocast(device, cfg.amp):
                    logits = model(x)
                loss, n_labels = masked_bce(logits, torch.from_numpy(train.labels[idx]).to(device))
                if n_labels == 0:
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + loss.item() * n_labels, count + n_labels
            val_auc = mean_auroc(predict_logits(model, val.images, cfg.eval_batch_size, cfg.amp), val.labels)
            history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_mean_auroc": val_auc})
            if val_auc > best_auc:
                best_auc, best_epoch, waited = val_auc, epoch, 0
                best_state = copy.deepcopy({k_: v.detach().cpu() for k_, v in model.state_dict().items()})
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
    if best_state is None:
        raise DataError("no epoch gave a finite validation AUROC; the validation split cannot select a model")
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val_mean_auroc": best_auc,
        "stopped_early": len(history) < cfg.epochs,
        "n_train_images": len(train),
        "n_val_images": len(val),
        "config": asdict(cfg),
    }
    return model, info
