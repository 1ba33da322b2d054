"""Compact StyleGAN2 (Karras et al. 2020, config-F ideas at CPU-friendly widths), label-conditioned.

What is the real StyleGAN2 here: a mapping network (z and a label embedding, each 2nd-moment normalised, through
an MLP with equalized LR and lr multiplier 0.01) to w; a learned constant input; modulated + demodulated 3x3
convs; per-pixel noise inputs with learned strengths; skip toRGB outputs (modulated 1x1, not demodulated);
a residual discriminator with minibatch-stddev and a projection on the label; w_avg for truncation. R1 with
lazy regularisation (every `r1_every` steps, weighted by the interval), Adam (0, 0.99) at 2.5e-3 and the EMA
generator for sampling come from the trainer (train/gan.py, train/loop.py).

Simplified against the reference implementation, for CPU speed and clarity:
- bilinear up-sampling / average-pool down-sampling instead of the [1,3,3,1] FIR filters;
- 2 mapping layers by default instead of 8 (`mapping_layers`), widths width * min(max_mult, S / r);
- one w for all layers: no style mixing regularisation; no path length regularisation;
- modulated convs in the non-fused form (scale inputs, shared-weight conv, scale outputs), which is exact and
  lets the conv kernels use channels_last and autocast;
- lazy R1 does not rescale Adam's learning rate and betas by k / (k + 1);
- the output is tanh-squashed into [-1, 1] (the reference leaves it linear).

extra options: w_dim (256), mapping_layers (2), mapping_lr_mul (0.01), max_mult (8), mbstd_group (4),
w_avg_beta (0.995, running mean of w for truncation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.base import Discriminator, Generator
from medsyn.models.config import GANConfig, resolution_plan, stage_channels, validate

SQRT2 = math.sqrt(2.0)
FP16_CLAMP = 256.0  # activations are clamped only in fp16, where they could overflow (as in StyleGAN2-ADA)

EXTRA_DEFAULTS: dict[str, Any] = {
    "w_dim": 256,
    "mapping_layers": 2,
    "mapping_lr_mul": 0.01,
    "max_mult": 8,
    "mbstd_group": 4,
    "w_avg_beta": 0.995,
}


def _options(cfg: GANConfig) -> dict[str, Any]:
    opts = validate(cfg, EXTRA_DEFAULTS)
    for key in ("w_dim", "mapping_layers", "max_mult", "mbstd_group"):
        v = opts[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"stylegan2: extra.{key} must be a positive integer, got {v!r}")
    if not 0 < float(opts["mapping_lr_mul"]) <= 1:
        raise ConfigError(f"stylegan2: extra.mapping_lr_mul must be in (0, 1], got {opts['mapping_lr_mul']}")
    if not 0 <= float(opts["w_avg_beta"]) < 1:
        raise ConfigError(f"stylegan2: extra.w_avg_beta must be in [0, 1), got {opts['w_avg_beta']!r}")
    return opts


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.2) with gain sqrt(2), so equalized-LR layers keep unit activation variance."""
    x = F.leaky_relu(x, 0.2) * SQRT2
    return x.clamp(-FP16_CLAMP, FP16_CLAMP) if x.dtype == torch.float16 else x


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.float().square().mean(dim=1, keepdim=True) + eps).rsqrt().to(x.dtype)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored N(0, 1/lr_mul^2), scaled at run time."""

    def __init__(self, in_f: int, out_f: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, act: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_f, in_f) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_f,), bias_init / lr_mul)) if bias else None
        self.w_gain = lr_mul / math.sqrt(in_f)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias * self.lr_mul
        x = F.linear(x, self.weight * self.w_gain, b)
        return _lrelu(x) if self.act else x


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate; `down` average-pools first (4x cheaper than conv-then-pool)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, bias: bool = True, act: bool = False,
                 down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.w_gain = 1.0 / math.sqrt(in_ch * k * k)
        self.act, self.down, self.pad = act, down, k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.w_gain, self.bias, padding=self.pad)
        return _lrelu(x) if self.act else x


class ModulatedConv2d(nn.Module):
    """Style-modulated conv, optionally demodulated, in the non-fused form (no per-sample weights)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.w_gain = 1.0 / math.sqrt(in_ch * k * k)
        self.demodulate, self.pad = demodulate, k // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w).float()
        weight = self.weight * self.w_gain
        if self.demodulate:
            # Demodulation is invariant to a per-sample style scale; normalising keeps fp16/bf16 in range.
            styles = styles / styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
        x = x * styles[:, :, None, None].to(x.dtype)
        x = F.conv2d(x, weight, padding=self.pad)
        if self.demodulate:
            with torch.autocast(x.device.type, enabled=False):  # tiny (B, in) @ (in, out): keep it fp32
                dcoefs = (styles.square() @ weight.float().square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
            x = x * dcoefs[:, :, None, None].to(x.dtype)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + per-pixel noise (learned strength) + bias + LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        x = x + noise * self.noise_strength.to(x.dtype) + self.bias.to(x.dtype)[None, :, None, None]
        return _lrelu(x)


class ToRGB(nn.Module):
    """Modulated 1x1 conv (no demodulation) to image channels: each resolution adds to the skip output."""

    def __init__(self, in_ch: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """Double the resolution: up-conv, conv, then add this block's toRGB to the upsampled running image."""

    def __init__(self, in_ch: int, out_ch: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, up=True)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim)
        self.to_rgb = ToRGB(out_ch, channels, w_dim)

    def forward(
        self, x: torch.Tensor, img: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(self.conv0(x, w), w)
        img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        return x, img + self.to_rgb(x, w).to(img.dtype)


class MappingNetwork(nn.Module):
    """z (and a normalised embedding of the multi-hot label) -> w, an MLP with a reduced learning rate."""

    def __init__(self, z_dim: int, num_classes: int, w_dim: int, layers: int, lr_mul: float) -> None:
        super().__init__()
        self.embed = EqualLinear(num_classes, w_dim) if num_classes else None
        in_dim = z_dim + (w_dim if num_classes else 0)
        self.net = nn.Sequential(
            *[EqualLinear(in_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul, act=True) for i in range(layers)]
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = _normalize_2nd_moment(z)
        if self.embed is not None and y is not None:
            x = torch.cat([x, _normalize_2nd_moment(self.embed(y)).to(x.dtype)], dim=1)
        return self.net(x)


class StyleGAN2Generator(Generator):
    """Mapping network + synthesis network from a learned constant; output tanh-squashed into [-1, 1]."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        opts = _options(cfg)
        base, n = resolution_plan(cfg.size)
        w_dim = opts["w_dim"]
        self.w_avg_beta = float(opts["w_avg_beta"])

        def ch(res: int) -> int:
            return stage_channels(cfg.width, cfg.size, res, opts["max_mult"])

        self.mapping = MappingNetwork(cfg.z_dim, cfg.num_classes, w_dim, opts["mapping_layers"],
                                      float(opts["mapping_lr_mul"]))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.const = nn.Parameter(torch.randn(ch(base), base, base))
        self.base_layer = SynthesisLayer(ch(base), ch(base), w_dim)
        self.base_rgb = ToRGB(ch(base), cfg.channels, w_dim)
        self.blocks = nn.ModuleList(
            SynthesisBlock(ch(base * 2**i), ch(base * 2 ** (i + 1)), cfg.channels, w_dim) for i in range(n)
        )

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None, truncation_psi: float = 1.0
    ) -> torch.Tensor:
        """`truncation_psi` < 1 pulls w toward its running mean: less diverse, more typical images.
        The mean is over all labels (as in StyleGAN2-ADA), so strong truncation also weakens conditioning."""
        labels = self._labels(y, z.shape[0], z)
        w = self.mapping(z, labels)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation_psi)
        x = self.const.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
        if self.base_layer.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # follow the model's memory format
        x = self.base_layer(x, w)
        img = self.base_rgb(x, w).float()
        for block in self.blocks:
            x, img = block(x, img, w)
        return torch.tanh(img).to(x.dtype)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv, down-conv, plus a pooled 1x1 skip; the sum is scaled by sqrt(1/2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3, act=True)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, act=True, down=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel with the feature std across groups of samples, so D can see (lack of) diversity."""
    b, c, h, w = x.shape
    g = next(k for k in range(min(group, b), 0, -1) if b % k == 0)  # largest group size dividing the batch
    s = x.float().reshape(g, -1, c, h, w)
    s = (s - s.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))
    s = s.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, s.to(x.dtype)], dim=1)


class StyleGAN2Discriminator(Discriminator):
    """fromRGB, residual down blocks to base x base, minibatch-stddev epilogue, projection on the label."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        opts = _options(cfg)
        base, n = resolution_plan(cfg.size)
        self.mbstd_group = opts["mbstd_group"]

        def ch(res: int) -> int:
            return stage_channels(cfg.width, cfg.size, res, opts["max_mult"])

        feat = ch(base)
        self.from_rgb = EqualConv2d(cfg.channels, ch(cfg.size), 1, act=True)
        self.blocks = nn.Sequential(
            *[DiscriminatorBlock(ch(cfg.size // 2**i), ch(cfg.size // 2 ** (i + 1))) for i in range(n)]
        )
        self.conv = EqualConv2d(feat + 1, feat, 3, act=True)
        self.fc = EqualLinear(feat * base * base, feat, act=True)
        self.out = EqualLinear(feat, 1)
        self.project = EqualLinear(cfg.num_classes, feat, bias=False) if cfg.num_classes else None
        self.feat = feat

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.blocks(self.from_rgb(x))
        h = self.fc(self.conv(minibatch_stddev(h, self.mbstd_group)).flatten(1))
        logits = self.out(h).squeeze(1)
        if self.project is not None:
            labels = self._labels(y, x.shape[0], x)
            logits = logits + (self.project(labels) * h).sum(dim=1) / math.sqrt(self.feat)
        return logits, None
