"""Two-stage mask-then-image generation (Guibas et al. 2017, "Synthetic medical images from dual generative
adversarial networks"): Stage I draws a segmentation mask, Stage II paints an image for it (pix2pix, Isola et al.
2017). The painter is label-conditioned when the training set has labels; Stage I draws masks whatever the
labels unless `mask_conditional` (an image + mask set without labels trains both unconditionally).

Stage I is the DCGAN-family generator of models/dcgan.py on masks, unconditional (`dcgan`) as in Guibas et
al. unless `mask_conditional` asks for `cgan` on the labels; masks are encoded as channels: one channel per
foreground label value, +1 where the pixel has that value and -1
elsewhere (`encode_masks`); `decode_masks` takes the strongest channel where it is above 0, background
elsewhere. Stage II (`MaskPainter`) is MONAI's `UNet` from the one-hot mask (+ the label vector broadcast as
one constant channel per class) to the image, tanh; its discriminator (`PairDiscriminator`) is MONAI's
`PatchDiscriminator` on concat(mask, labels, image), as in pix2pix.

`TwoStageGenerator` holds both and fits the Generator contract, so `generate`, `--balance`, the privacy filter
and export need no model-specific code beyond writing the masks: `G(z, y)` = paint(decode(masks(z_I, y)), y,
z_style)`, an image that is a deterministic function of (z, y). z is Stage I's noise followed by `style_dim`
entries of appearance noise for the painter (none by default: one mask, one painting). pix2pix found a noise
input ignored (its L1 term pulls every painting of a mask towards the one training image), so a painter with a
style code is trained as Yang et al. (2019, DSGAN) and Lee et al. (2019, MR-GAN) propose: two codes per mask,
L1 on the mean of the two paintings (first-moment reconstruction), and a diversity term that rewards
|paint(z1) - paint(z2)| / |z1 - z2| up to a cap.

Options (`model_extra`), and why:
- `mask_labels`: the label values of the training masks, 0 included; set from the data by the trainer.
- `l1_weight` 100: pix2pix's lambda; the L1 term keeps the painting faithful to the real image of the mask,
  the adversarial term sharpens it.
- `unet_levels` 'auto': halve while the side stays even and >= 4 px, at most 6 levels (16/28 px: 3 levels,
  64 px: 5), channels width x 1, 2, 4, 8, 8, 8; `res_units` 2 (MONAI's residual units per level).
- `dropout` 0: pix2pix's dropout (its only noise, off at sampling). On the covid set 0.5 only delayed the
  painter's memorisation (reconstruction attack 0.59 after 240 s, 0.94 after a 25-minute run) and cost Dice.
- `mask_conditional` false: Stage I draws masks whatever the labels (the painter gets them). On the covid set's
  90 masks over 8 label groups (some with 1-3 masks) the label-conditional mask GAN collapsed to one mask per
  group and drew noise for the rarest; set it for masks whose shape depends on the finding (lesions).
- `style_dim` 0: appearance noise channels (constant planes beside the mask); 0 is pix2pix's deterministic
  painter with plain L1 (one mean-looking image per mask). Measured on the covid set (64 px): at
  `diversity_weight` 10 two paintings of one mask differed by only ~0.02 mean absolute after 1,332 steps
  (hardly visible); at 100 they reached the cap within 100 steps but as grid-like texture, so it stays off by
  default until it is shown to help.
- `diversity_weight` 10 and `diversity_cap` 0.2: DSGAN's lambda and tau. With N(0, 1) codes E|z1 - z2| = 1.13,
  so the cap lets two paintings of one mask differ by ~0.23 mean absolute (images in [-1, 1]): about what two
  real radiographs with near-identical lung masks differ by (0.24 on the covid set, mask IoU > 0.8). The term
  is a mean over pixels, so its pull per pixel is ~5x weaker than the L1 term's at weight 10 (see style_dim).
- `d_layers` 'auto': PatchDiscriminator layers, 3 (pix2pix's 70x70 patches at 256 px) where the image is at
  least 32 px, fewer below (16 and 28 px: 2) so its patches stay smaller than the image.
- `d_norm` 'batch' (pix2pix's, and the mask GAN's) or 'group' (GroupNorm, per image: what `--dp-epsilon` sets,
  since BatchNorm mixes a batch's images); both discriminators. `mbstd` 4: the mask GAN discriminator's
  minibatch-stddev group (models/dcgan.py), 0 under `--dp-epsilon` for the same reason.
- `mask_share` 0.5 and `mask_steps` (None: `steps`): Stage I's share of `--time-limit` and its step count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

from medsyn.data.masks import MAX_LABEL
from medsyn.errors import ConfigError
from medsyn.models.base import Generator
from medsyn.models.config import GANConfig, validate
from medsyn.models.dcgan import DCGANGenerator

TWOSTAGE_DEFAULTS: dict[str, Any] = {
    "mask_labels": [0, 1],
    "l1_weight": 100.0,
    "unet_levels": "auto",
    "res_units": 2,
    "dropout": 0.0,
    "mask_conditional": False,
    "style_dim": 0,
    "diversity_weight": 10.0,
    "diversity_cap": 0.2,
    "d_layers": "auto",
    "d_norm": "batch",
    "mbstd": 4,
    "mask_share": 0.5,
    "mask_steps": None,
}
MAX_LEVELS = 6
D_NORMS = ("batch", "group")


def twostage_options(cfg: GANConfig) -> dict[str, Any]:
    """The extra options over their defaults, 'auto' resolved for cfg.size, checked (one-line ConfigErrors)."""
    opts = validate(cfg, TWOSTAGE_DEFAULTS)
    values = opts["mask_labels"]
    if (not isinstance(values, list) or values != sorted(set(values)) or not values or values[0] != 0
            or not all(isinstance(v, int) and 0 <= v <= MAX_LABEL for v in values)):  # fmt: skip
        raise ConfigError(f"{cfg.name}: mask_labels must be the sorted label values 0..{MAX_LABEL} of the masks, "
                          f"0 first, got {values!r}")  # fmt: skip
    if len(values) < 2:
        raise ConfigError(f"{cfg.name}: the training masks have no foreground label (all background)")
    if opts["unet_levels"] == "auto":
        levels = 1
        while levels < MAX_LEVELS and cfg.size % 2**levels == 0 and cfg.size // 2**levels >= 4:
            levels += 1
        opts["unet_levels"] = levels
    if opts["d_layers"] == "auto":
        opts["d_layers"] = min(3, _max_layers(cfg.size))
    levels, layers = opts["unet_levels"], opts["d_layers"]
    if not _count(levels, 1) or cfg.size % 2 ** (levels - 1) or cfg.size // 2 ** (levels - 1) < 2:
        raise ConfigError(f"{cfg.name}: unet_levels {levels!r} must be an integer >= 1 that halves the "
                          f"{cfg.size} px image into even sides of at least 2 px")  # fmt: skip
    if not _count(layers, 1) or cfg.size // 2 ** (layers + 1) < 2:
        raise ConfigError(f"{cfg.name}: d_layers {layers!r} must be an integer >= 1 with a patch grid of at least "
                          f"2x2 on {cfg.size} px images (at most {_max_layers(cfg.size)})")  # fmt: skip
    for key in ("res_units", "style_dim"):
        if not _count(opts[key], 0):
            raise ConfigError(f"{cfg.name}: {key} must be an integer >= 0, got {opts[key]!r}")
    inf = float("inf")
    for key, low, high in (("l1_weight", 0.0, inf), ("dropout", 0.0, 1.0), ("mask_share", 0.0, 1.0),
                           ("diversity_weight", 0.0, inf), ("diversity_cap", 0.0, inf)):  # fmt: skip
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not (low <= v < high):
            raise ConfigError(f"{cfg.name}: {key} must be a number in [{low:g}, {high:g}), got {v!r}")
    if opts["d_norm"] not in D_NORMS:
        raise ConfigError(f"{cfg.name}: d_norm must be one of {list(D_NORMS)}, got {opts['d_norm']!r}")
    if not _count(opts["mbstd"], 0):
        raise ConfigError(f"{cfg.name}: mbstd must be an integer >= 0, got {opts['mbstd']!r}")
    if not isinstance(opts["mask_conditional"], bool):
        raise ConfigError(f"{cfg.name}: mask_conditional must be true or false, got {opts['mask_conditional']!r}")
    if opts["mask_share"] == 0:
        raise ConfigError(f"{cfg.name}: mask_share (Stage I's share of the time limit) must be in (0, 1)")
    if opts["mask_steps"] is not None and not _count(opts["mask_steps"], 1):
        raise ConfigError(f"{cfg.name}: mask_steps must be a positive integer (or null), got {opts['mask_steps']!r}")
    return opts


def _count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _max_layers(size: int) -> int:
    return max((n for n in range(1, 8) if size // 2 ** (n + 1) >= 2), default=0)


def mask_config(cfg: GANConfig) -> GANConfig:
    """Stage I's configuration: a DCGAN-family generator with one output channel per foreground label,
    conditional (`cgan`) when `mask_conditional` and the run has classes, `dcgan` otherwise."""
    opts = twostage_options(cfg)
    labels = opts["mask_labels"]
    name = "cgan" if cfg.num_classes and opts["mask_conditional"] else "dcgan"
    extra = {"d_norm": opts["d_norm"], "mbstd": opts["mbstd"]}
    return GANConfig(name, cfg.size, len(labels) - 1, cfg.num_classes, cfg.z_dim, cfg.width, extra)


def encode_masks(masks: torch.Tensor, values: list[int]) -> torch.Tensor:
    """uint8 label masks (B, 1, S, S) -> float (B, L, S, S): +1 where the pixel has foreground value L_j, else -1."""
    fg = torch.tensor(values[1:], device=masks.device, dtype=masks.dtype).view(1, -1, 1, 1)
    return (masks == fg).float().mul_(2).sub_(1)


def decode_masks(x: torch.Tensor, values: list[int]) -> torch.Tensor:
    """float (B, L, S, S) -> uint8 label masks (B, 1, S, S): the strongest channel's value where it is > 0."""
    best, index = x.float().max(dim=1, keepdim=True)
    fg = torch.tensor(values[1:], device=x.device, dtype=torch.uint8)
    return torch.where(best > 0, fg[index], torch.zeros_like(index, dtype=torch.uint8))


class MaskPainter(nn.Module):
    """Stage II: forward(masks uint8 (B, 1, S, S) label values, y (B, K) or None, style (B, style_dim) or None)
    -> images (B, C, S, S) in [-1, 1]. A missing style is the prior's centre (zeros)."""

    def __init__(self, cfg: GANConfig, opts: dict[str, Any]) -> None:
        super().__init__()
        self.values = list(opts["mask_labels"])
        self.num_classes = cfg.num_classes
        self.z_dim = int(opts["style_dim"])  # the training loop's fixed sample noise has this size
        lookup = torch.full((256,), -1, dtype=torch.long)
        lookup[torch.tensor(self.values)] = torch.arange(len(self.values))
        self.register_buffer("lookup", lookup, persistent=False)  # label value -> one-hot index
        levels = int(opts["unet_levels"])
        self.unet = UNet(
            spatial_dims=2,
            in_channels=self.condition_channels + self.z_dim,
            out_channels=cfg.channels,
            channels=[cfg.width * min(8, 2**i) for i in range(levels)],
            strides=[2] * (levels - 1),
            num_res_units=int(opts["res_units"]),
            dropout=float(opts["dropout"]),
        )

    @property
    def condition_channels(self) -> int:
        return len(self.values) + self.num_classes

    def condition(self, masks: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The mask one-hot over its label values (0/1), then each class label as a constant plane. Values outside
        `mask_labels` map to -1, which one_hot refuses (generate checks supplied masks first, in one line)."""
        index = self.lookup[masks[:, 0].long()]
        planes = nn.functional.one_hot(index, len(self.values)).permute(0, 3, 1, 2).float()
        if self.num_classes:
            assert y is not None
            labels = torch.nan_to_num(y.float(), nan=0.0)[:, :, None, None]
            planes = torch.cat([planes, labels.expand(-1, -1, *planes.shape[2:])], dim=1)
        return planes

    def forward(self, masks: torch.Tensor, y: torch.Tensor | None = None, style: torch.Tensor | None = None
                ) -> torch.Tensor:  # fmt: skip
        planes = self.condition(masks, y)
        if self.z_dim:
            if style is None:
                style = planes.new_zeros(planes.shape[0], self.z_dim)
            planes = torch.cat([planes, style.to(planes)[:, :, None, None].expand(-1, -1, *planes.shape[2:])], dim=1)
        return torch.tanh(self.unet(planes))


class PairDiscriminator(nn.Module):
    """pix2pix's conditional PatchGAN: forward(condition, images) -> (B, P) patch logits of real vs painted."""

    def __init__(self, cfg: GANConfig, opts: dict[str, Any], condition_channels: int) -> None:
        super().__init__()
        norm = "BATCH" if opts["d_norm"] == "batch" else ("GROUP", {"num_groups": math.gcd(32, cfg.width)})
        self.net = PatchDiscriminator(spatial_dims=2, channels=cfg.width, in_channels=condition_channels + cfg.channels,
                                      num_layers_d=int(opts["d_layers"]), norm=norm)  # fmt: skip

    def forward(self, condition: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, images], dim=1))[-1].flatten(1)


class TwoStageGenerator(Generator):
    """Stage I (`masks`, a DCGAN-family generator of encoded masks) + Stage II (`painter`): forward(z, y) is the
    painted image of the drawn mask; `draw` returns the mask too. z is (B, cfg.z_dim + style_dim): Stage I's
    noise, then the painter's style code. `trained` (a frozen parameter saved with the weights) says which
    stages were trained: [masks, images], 1 = trained."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__(cfg)
        self.opts = twostage_options(cfg)
        self.values = list(self.opts["mask_labels"])
        self.masks = DCGANGenerator(mask_config(cfg))
        self.painter = MaskPainter(cfg, self.opts)
        self.trained = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.z_dim = cfg.z_dim + self.painter.z_dim

    def draw(self, z: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, S, S) in [-1, 1], uint8 label masks (B, 1, S, S)) for noise z and labels y."""
        labels = self._labels(y, z.shape[0], z) if self.num_classes else None
        masks = decode_masks(self.masks(z[:, : self.cfg.z_dim], labels), self.values)
        return self.painter(masks, labels, z[:, self.cfg.z_dim :]), masks

    def paint(self, masks: torch.Tensor, y: torch.Tensor | None = None, z: torch.Tensor | None = None
              ) -> torch.Tensor:  # fmt: skip
        """Images for given uint8 label masks (B, 1, S, S) with values among `mask_labels`; z (B, z_dim) as for
        `draw` (only its style part is read; None: the style prior's centre)."""
        labels = self._labels(y, masks.shape[0], masks) if self.num_classes else None
        return self.painter(masks, labels, None if z is None else z[:, self.cfg.z_dim :])

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.draw(z, y)[0]
