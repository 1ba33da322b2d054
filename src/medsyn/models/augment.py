"""Differentiable augmentation for data-efficient GAN training: DiffAugment and an ADA-style controller.

Augmentations are applied to every image the discriminator sees (real and fake, and in G's step), so D cannot
learn them as a feature and G is not pushed to reproduce them. No flips: chest radiographs have laterality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medsyn.errors import ConfigError

DEFAULT_POLICY = "color,translation,cutout"


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (_rand(x) - 0.5)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # grayscale has no saturation
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x) * 2) + mean


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Integer shift by up to ratio * size with zero (mid-grey) padding; a gather keeps it differentiable."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(b, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    gy = (gy + ty + 1).clamp(0, h + 1)
    gx = (gx + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[gb, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ratio * size per image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    top, left = oy - ch // 2, ox - cw // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
    "color": [_brightness, _saturation, _contrast],
    "translation": [_translation],
    "cutout": [_cutout],
}


def _parse(policy: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    names = [n.strip() for n in policy.split(",") if n.strip()]
    unknown = [n for n in names if n not in _OPS]
    if unknown:
        raise ConfigError(f"unknown augmentation(s) {unknown} in policy {policy!r}; known: {sorted(_OPS)}")
    return [op for n in names for op in _OPS[n]]


def diff_augment(x: torch.Tensor, policy: str = DEFAULT_POLICY, p: float = 1.0) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020). With p < 1 each op hits each image with probability p (ADA-style)."""
    for op in _parse(policy):
        if p >= 1.0:
            x = op(x)
        elif p > 0.0:
            hit = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
            x = torch.where(hit, op(x), x)
    return x


class AdaptiveAugment:
    """ADA controller (Karras et al. 2020): raise p while D overfits (E[sign(D(real))] > target), else lower.

    `saturate_kimg`: thousands of images over which p may move from 0 to 1 (ADA uses 500 for large datasets;
    the smaller default suits small medical datasets). `update` returns the new p.
    """

    def __init__(self, target: float = 0.6, p: float = 0.0, saturate_kimg: float = 100.0,
                 policy: str = DEFAULT_POLICY, p_max: float = 1.0) -> None:
        _parse(policy)
        if not 0.0 <= p <= p_max <= 1.0:
            raise ConfigError(f"ADA needs 0 <= p <= p_max <= 1, got p={p}, p_max={p_max}")
        if saturate_kimg <= 0:
            raise ConfigError(f"ADA saturate_kimg must be positive, got {saturate_kimg}")
        self.target, self.p, self.saturate_kimg = target, p, saturate_kimg
        self.policy, self.p_max = policy, p_max

    def update(self, real_logits_sign_mean: float | torch.Tensor, n_images: int = 256) -> float:
        """`n_images`: real images seen since the last update (ADA: batch size * update interval)."""
        rt = float(real_logits_sign_mean)
        step = n_images / (self.saturate_kimg * 1000.0)
        sign = (rt > self.target) - (rt < self.target)
        self.p = min(max(self.p + sign * step, 0.0), self.p_max)
        return self.p

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy, p=self.p) if self.p > 0 else x

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "target": self.target, "saturate_kimg": self.saturate_kimg,
                "policy": self.policy, "p_max": self.p_max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore p (and settings) so a resumed run continues with the same augmentation strength."""
        merged = {**self.state_dict(), **{k: v for k, v in state.items() if k in self.state_dict()}}
        self.__dict__.update(AdaptiveAugment(**merged).__dict__)
