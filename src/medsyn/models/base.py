"""Common generator/discriminator interface so the trainer and generation code stay model-agnostic."""

from __future__ import annotations

import torch
from torch import nn

from medsyn.models.config import MODELS, GANConfig


class _GANModule(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.conditional = MODELS[cfg.name].conditional

    def _labels(self, y: torch.Tensor | None, batch: int, ref: torch.Tensor) -> torch.Tensor | None:
        """Check y of conditional models; NaN (unknown label) reads as 'absent': no NaN outputs."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError(f"{self.cfg.name} is conditional: pass y of shape ({batch}, {self.num_classes})")
        if y.shape != (batch, self.num_classes):
            want = (batch, self.num_classes)
            raise ValueError(f"{self.cfg.name}: y must have shape {want}, got {tuple(y.shape)}")
        return torch.nan_to_num(y.to(device=ref.device, dtype=torch.float32), nan=0.0)


class Generator(_GANModule):
    """forward(z (B, z_dim), y (B, K) float or None) -> images (B, C, S, S) in [-1, 1]."""

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Discriminator(_GANModule):
    """forward(x (B, C, S, S), y (B, K) or None) -> (logits (B,), class_logits (B, K) or None)."""

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        raise NotImplementedError
