"""Image classifiers for utility evaluation and as feature extractors (FID, privacy, re-identification).

    net = build_classifier("densenet121", in_channels=1, num_classes=5, size=64)
    logits = net(x)            # x float (N, C, S, S) in [0, 1] -> (N, K)
    feats = net.features(x)    # (N, net.feature_dim), the penultimate layer

`densenet121` is MONAI's DenseNet121 (spatial_dims=2), the network of the chest X-ray synthesis studies;
it is never pretrained here (no download), so results do not depend on an ImageNet checkpoint.
`smallcnn` is a few conv+BN+ReLU blocks and a global pool: fast enough for CPU runs and tests.
`num_classes=0` builds a bare encoder whose forward returns the features (used by re-identification).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet121
from torch import nn

from medsyn.errors import ConfigError

#: name -> smallest image size the network accepts (DenseNet121 downsamples by 32).
CLASSIFIERS: dict[str, int] = {"densenet121": 32, "smallcnn": 8}


class Classifier(nn.Module):
    """`features(x)` -> (N, feature_dim); `forward(x)` = `head(features(x))` -> logits (N, K)."""

    feature_dim: int
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _head(feature_dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()


class SmallCNN(Classifier):
    """Four conv3x3+BN+ReLU blocks (width, 2w, 4w, 8w), 2x max-pool between them, global average pool."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        widths = [width * 2**i for i in range(4)]
        for i, c_out in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.head = _head(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DenseNet121Classifier(Classifier):
    """MONAI DenseNet121 whose last linear layer is split off as `head`, so `features` is the pooled layer."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=max(num_classes, 1))
        out = self.net.class_layers.out
        self.net.class_layers.out = nn.Identity()  # net(x) now ends at relu -> pool -> flatten
        self.feature_dim = out.in_features
        self.head = out if num_classes else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_classifier(name: str, in_channels: int, num_classes: int, size: int) -> Classifier:
    """A fresh (randomly initialised) classifier; ConfigError for an unknown name or a size it cannot take."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    if size < CLASSIFIERS[name]:
        raise ConfigError(f"classifier {name} needs images of at least {CLASSIFIERS[name]} px, got {size}")
    if in_channels < 1 or num_classes < 0:
        raise ConfigError(
            f"classifier {name}: in_channels must be >= 1 and num_classes >= 0, "
            f"got {in_channels} and {num_classes}"
        )
    if name == "densenet121":
        return DenseNet121Classifier(in_channels, num_classes)
    return SmallCNN(in_channels, num_classes)
