"""Image classifiers for utility evaluation and as feature extractors (FID, privacy, re-identification).

    net = build_classifier("densenet121", in_channels=1, num_classes=5, size=64)
    logits = net(x)            # x float (N, C, S, S) in [0, 1] -> (N, K)
    feats = net.features(x)    # (N, net.feature_dim), the penultimate layer

`densenet121` is MONAI's DenseNet121 (spatial_dims=2), the network of the chest X-ray synthesis studies;
it is never pretrained here (no download), so results do not depend on an ImageNet checkpoint.
`smallcnn` is a few conv+BN+ReLU blocks and a global pool: fast enough for CPU runs and tests.
`num_classes=0` builds a bare encoder whose forward returns the features (used by re-identification).

Trained models are shared as a folder: `<stem>.safetensors` (weights, no pickle, with the description in
its metadata, so that file alone loads) and `<stem>.json` (a readable copy of the same description):

    folder = save_classifier(net, "models/classifier", extra={"classes": ["Effusion", ...]})
    net = load_classifier(folder, device="cpu")     # net.meta: the stored description
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DenseNet121
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from medsyn import __version__
from medsyn.errors import CheckpointError, ConfigError, MedsynError
from medsyn.io import atomic_path, write_json_atomic

#: name -> smallest image size the network accepts (DenseNet121 downsamples by 32).
CLASSIFIERS: dict[str, int] = {"densenet121": 32, "smallcnn": 8}


class Classifier(nn.Module):
    """`features(x)` -> (N, feature_dim); `forward(x)` = `head(features(x))` -> logits (N, K)."""

    feature_dim: int
    head: nn.Module
    arch: dict[str, Any]  # the build_classifier arguments, set by it: what save_classifier stores

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
    net: Classifier = (DenseNet121Classifier if name == "densenet121" else SmallCNN)(in_channels, num_classes)
    net.arch = {"name": name, "in_channels": in_channels, "num_classes": num_classes, "size": size}
    return net


# ------------------------------------------------------------------------------------- save / load

FORMAT_VERSION = 1
CLASSIFIER_FORMAT = "medsyn-classifier"
_RESERVED = ("format", "format_version", "medsyn_version", "architecture")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def save_model_folder(
    module: nn.Module, folder: str | os.PathLike[str], stem: str, fmt: str, meta: dict[str, Any]
) -> Path:
    """Write folder/<stem>.safetensors (weights + `meta` as metadata) and folder/<stem>.json, each atomically.

    `meta` must be JSON (ConfigError otherwise); format, format version and medsyn version are added.
    """
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    full = {"format": fmt, "format_version": FORMAT_VERSION, "medsyn_version": __version__, **meta}
    try:
        text = json.dumps(full, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{fmt} description is not JSON-serialisable ({_first_line(exc)})") from None
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(folder / f"{stem}.safetensors") as tmp:
        tmp.write_bytes(save(tensors, metadata={"medsyn": text}))  # save_file would make the file 0600
    write_json_atomic(folder / f"{stem}.json", full)
    return folder


def read_model_folder(
    folder: str | os.PathLike[str], stem: str, fmt: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(description, CPU tensors, weights file) of a folder written by `save_model_folder`; never unpickles.

    `folder` may also be the .safetensors or .json file in it. Any problem is a one-line CheckpointError.
    """
    p = Path(folder).expanduser()
    file = (p.parent if p.is_file() else p) / f"{stem}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: {fmt} weights not found; is {p} a folder written by medsyn?")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            raw = (fh.metadata() or {}).get("medsyn")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({_first_line(exc)})") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: corrupt medsyn metadata ({_first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{file}: not a {fmt} file (format {None if meta is None else meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: {fmt} format version {meta.get('format_version')!r} (medsyn {meta.get('medsyn_version', '?')}) "
            f"is not readable by medsyn {__version__}, which reads version {FORMAT_VERSION}"
        )
    return meta, tensors, file


def check_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r} ({_first_line(exc)})") from None


def rebuild_classifier(arch: Any, file: Path) -> Classifier:
    """`build_classifier(**arch)` for a stored architecture; a bad one is a CheckpointError naming `file`."""
    try:
        with torch.random.fork_rng(devices=[]):  # loading must not disturb the caller's seeded RNG stream
            return build_classifier(**arch)
    except (MedsynError, TypeError) as exc:
        raise CheckpointError(f"{file}: stored architecture {arch!r} is invalid ({_first_line(exc)})") from None


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Strict state-dict load; a mismatch is a one-line CheckpointError."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        why = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise CheckpointError(f"{file}: weights do not match the stored architecture ({why})") from None


def save_classifier(model: nn.Module, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write folder/classifier.safetensors + classifier.json: weights, architecture, medsyn version and
    `extra` (JSON: e.g. `classes`, the training history); returns `folder`.

    Only models from `build_classifier` (they carry `arch`); `extra["classes"]`, when given, must name
    every output. Input of the saved model: float (N, C, S, S) in [0, 1].
    """
    model = getattr(model, "_orig_mod", model)
    arch = getattr(model, "arch", None)
    if not isinstance(model, Classifier) or not isinstance(arch, dict):
        raise ConfigError(f"save_classifier takes a model built by build_classifier, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ConfigError(f"save_classifier: extra may not set {clash}; they are written by medsyn")
    classes = extra.get("classes")
    if classes is not None and len(classes) != arch["num_classes"]:
        raise ConfigError(f"save_classifier: {len(classes)} class names for a model with {arch['num_classes']} outputs")
    return save_model_folder(model, folder, "classifier", CLASSIFIER_FORMAT, {"architecture": arch, **extra})


def load_classifier(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
    """The classifier saved in `folder` (eval mode, on `device`); `.meta` holds the stored description
    (architecture, `classes` and any other extra). Missing or corrupt files: a one-line CheckpointError."""
    dev = check_device(device)
    meta, tensors, file = read_model_folder(folder, "classifier", CLASSIFIER_FORMAT)
    model = rebuild_classifier(meta.get("architecture"), file)
    load_weights(model, tensors, file)
    model.meta = meta
    return model.to(dev).eval()
