"""DCGAN family: unconditional DCGAN, conditional GAN (projection D) and AC-GAN, sharing one set of blocks.

Layout for size S = base * 2^n (base 4 or 7): the generator maps [z; embed(y)] from 1x1 to base x base with a
ConvTranspose, then doubles n times; the discriminator mirrors it. Feature channels at resolution r are
width * min(8, S / 2r), i.e. the classic 64 px DCGAN (ngf*8 at 4x4 ... ngf at 32x32).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medsyn.errors import ConfigError
from medsyn.models.base import Discriminator, Generator
from medsyn.models.config import GANConfig, resolution_plan, stage_channels, validate
from medsyn.models.stylegan2 import minibatch_stddev

D_NORMS = ("batch", "group", "spectral", "none")
SAMPLE_BN = ("running", "batch")


def _options(cfg: GANConfig) -> dict[str, Any]:
    """extra options. `d_norm`: discriminator normalisation, 'batch' as in the paper, 'spectral' or 'none' for
    gradient penalties (ill-defined with batch statistics), 'group' (GroupNorm: per image, what differentially
    private training needs, as batch statistics mix the images whose gradients it clips one by one). `embed_dim`: label embedding size (cgan/acgan).
    `sample_bn`: which BatchNorm statistics G uses in eval mode (sampling, export): 'batch' (default: those of
    the batch drawn, as in training and in the PyTorch DCGAN recipe) or 'running' (the running averages, the
    behaviour before issue 11). The running averages are the raw G's, not those of the EMA weights that are
    sampled; on PneumoniaMNIST 'batch' raised recall 0.21 -> 0.26 and coverage 0.49 -> 0.55 and lowered FID
    3.3 -> 2.7 for the same weights (benchmarks/bench_collapse.py). A batch's images then depend a little on
    each other, as in training; draw batches of more than a few images.
    `mbstd`: minibatch-stddev group size in D (Karras et al. 2018; default 4, 0 = off as before issue 11): D
    sees how alike a batch's images are, so a collapsed G is caught; on PneumoniaMNIST it raised recall
    0.21 -> 0.58 and coverage 0.49 -> 0.59 (FID 3.3 -> 2.1) at the same steps and TSTR/TRTR."""
    defaults: dict[str, Any] = {"d_norm": "batch", "sample_bn": "batch", "mbstd": 4}
    if cfg.name != "dcgan":
        defaults["embed_dim"] = 64
    opts = validate(cfg, defaults)
    if opts["d_norm"] not in D_NORMS:
        raise ConfigError(f"{cfg.name}: extra.d_norm must be one of {list(D_NORMS)}, got {opts['d_norm']!r}")
    if opts["sample_bn"] not in SAMPLE_BN:
        raise ConfigError(f"{cfg.name}: extra.sample_bn must be one of {list(SAMPLE_BN)}, got {opts['sample_bn']!r}")
    for key, low in (("embed_dim", 1), ("mbstd", 0)):
        v = opts.get(key, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"{cfg.name}: extra.{key} must be an integer >= {low}, got {v!r}")
    return opts


class GeneratorBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, with `batch_stats`, normalises by the batch's own statistics in eval mode too (the
    running averages are still kept, so checkpoints keep their layout, but not updated outside training)."""

    def __init__(self, channels: int, batch_stats: bool) -> None:
        super().__init__(channels)
        self.batch_stats = batch_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.batch_stats:
            return super().forward(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _dcgan_init(module: nn.Module, label_layer: nn.Linear | None) -> None:
    """Radford et al.: all weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases zero.

    The label layer (G's embedding, D's projection) is the exception: at N(0, 0.02) the label signal starts
    ~50x weaker than z and conditioning is learned very slowly, so it gets an embedding-style N(0, 1) init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    if label_layer is not None:
        nn.init.normal_(label_layer.weight, 0.0, 1.0)


def _norm(kind: str, channels: int) -> nn.Module:
    """D's normalisation layer: BatchNorm, or GroupNorm with Opacus' BatchNorm replacement's group count."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(32, channels), channels)


def _channels(cfg: GANConfig, res: int) -> int:
    return stage_channels(cfg.width, cfg.size, 2 * res, 8)


class DCGANGenerator(Generator):
    """ConvTranspose + BN + ReLU stack; conditional models append a linear embedding of multi-hot y to z."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        opts = _options(cfg)
        base, n = resolution_plan(cfg.size)
        self.embed = nn.Linear(cfg.num_classes, opts["embed_dim"]) if self.conditional else None
        in_dim = cfg.z_dim + (opts["embed_dim"] if self.conditional else 0)
        batch_stats = opts["sample_bn"] == "batch"
        res = base
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, _channels(cfg, res), base, 1, 0, bias=False),
            GeneratorBatchNorm(_channels(cfg, res), batch_stats),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(_channels(cfg, res), _channels(cfg, 2 * res), 4, 2, 1, bias=False),
                GeneratorBatchNorm(_channels(cfg, 2 * res), batch_stats),
                nn.ReLU(inplace=True),
            ]
            res *= 2
        layers += [nn.ConvTranspose2d(_channels(cfg, res), cfg.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self, self.embed)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        labels = self._labels(y, z.shape[0], z)
        h = z if self.embed is None else torch.cat([z, self.embed(labels)], dim=1)
        return self.net(h[:, :, None, None])


class DCGANDiscriminator(Discriminator):
    """Conv + norm + LeakyReLU(0.2) stack down to base x base, then a base x base conv to one logit.

    cgan adds a projection term <embed(y), mean-pooled features>; acgan adds a multi-label classifier head
    and ignores y (the auxiliary classifier is its only use of labels, as in Odena et al.). With `mbstd`, a
    minibatch-stddev channel is appended before the heads, so D sees how alike the images of a batch are.
    """

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        opts = _options(cfg)
        base, n = resolution_plan(cfg.size)
        normed = opts["d_norm"] in ("batch", "group")
        res = cfg.size // 2
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.channels, _channels(cfg, res), 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(n - 1):
            c_in, c_out = _channels(cfg, res), _channels(cfg, res // 2)
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not normed))
            if normed:
                layers.append(_norm(opts["d_norm"], c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            res //= 2
        feat = _channels(cfg, base)
        self.mbstd = opts["mbstd"]
        self.features = nn.Sequential(*layers)
        head_in = feat + (1 if self.mbstd else 0)
        self.head = nn.Conv2d(head_in, 1, base, 1, 0)
        self.project = nn.Linear(cfg.num_classes, feat, bias=False) if cfg.name == "cgan" else None
        self.classifier = nn.Conv2d(head_in, cfg.num_classes, base, 1, 0) if cfg.name == "acgan" else None
        _dcgan_init(self, self.project)
        if opts["d_norm"] == "spectral":
            for m in list(self.modules()):
                if isinstance(m, nn.Conv2d | nn.Linear):
                    spectral_norm(m)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x)
        hs = minibatch_stddev(h, self.mbstd) if self.mbstd else h
        logits = self.head(hs).flatten(1).squeeze(1)
        if self.project is not None:
            labels = self._labels(y, x.shape[0], x)
            logits = logits + (self.project(labels) * h.mean(dim=(2, 3))).sum(dim=1)
        class_logits = None if self.classifier is None else self.classifier(hs).flatten(1)
        return logits, class_logits
