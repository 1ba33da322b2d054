"""Feature extractors for fidelity and privacy metrics, all offline.

Every extractor maps images (N, C, H, W), uint8 or float in [0, 1], to float64 features (N, D), in
batches (memory bounded by `batch_size`, memmaps are never read whole), and carries a `name` and an
`implementation` string that every metric copies into its result: an FID is meaningless without
knowing which network produced the features.

* `ClassifierFeatures`: penultimate layer of a classifier trained on the REAL training split (the
  utility classifiers). Always available; the recommended backbone for chest radiographs, since
  ImageNet-Inception features measure the wrong things on X-rays.
* `TorchXRayVisionFeatures`: the torchxrayvision DenseNet121 (CXR-pretrained), from a LOCAL weights file.
* `InceptionFeatures`: the pytorch-fid Inception-v3 (TF 2015 FID weights), from a LOCAL weights file,
  for comparability with FID values in the literature.
* `PixelFeatures`: area-downsampled raw pixels, for pixel-space privacy checks.

Weights are never downloaded; they are read with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121
from torch import nn

from medsyn.errors import CheckpointError, ConfigError, DataError
from medsyn.evaluate.utility import as_unit_tensor, batches, check_images
from medsyn.progress import progress_bar


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (N, C, H, W) float in [0, 1] (or uint8) -> float64 (N, dim)."""

    name: str
    dim: int
    implementation: str

    def __call__(self, images: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class FeatureSpace:
    """What a metric's features came from, recorded in its result (backbone name + implementation)."""

    name: str
    implementation: str

    @classmethod
    def of(cls, source: FeatureSpace | FeatureExtractor) -> FeatureSpace:
        if isinstance(source, FeatureSpace):
            return source
        name, impl = getattr(source, "name", None), getattr(source, "implementation", None)
        if not isinstance(name, str) or not isinstance(impl, str):
            raise ConfigError(
                f"feature space must be a FeatureSpace or a feature extractor with `name` and "
                f"`implementation`, got {type(source).__name__}"
            )
        return cls(name, impl)


class _BatchedExtractor:
    """Shared batching, device handling and checks; subclasses implement `_embed`."""

    name: str
    dim: int
    implementation: str

    def __init__(self, batch_size: int, device: str | torch.device, progress: bool) -> None:
        if batch_size < 1:
            raise ConfigError(f"feature batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.device, self.progress = batch_size, torch.device(device), progress

    def _embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _modules(self) -> list[nn.Module]:
        return []

    def __call__(self, images: Any) -> np.ndarray:
        images = check_images(images, f"{self.name} feature input")
        out = np.empty((len(images), self.dim), dtype=np.float64)
        modes = [(m, m.training) for m in self._modules()]
        for m, _ in modes:
            m.eval()
        try:
            with (
                torch.inference_mode(),
                progress_bar(f"features ({self.name})", len(images), quiet=not self.progress) as advance,
            ):
                for idx in batches(len(images), self.batch_size):
                    x = as_unit_tensor(np.asarray(images[idx])).to(self.device)
                    out[idx] = self._embed(x).double().cpu().numpy()
                    advance(len(idx))
        finally:
            for m, training in modes:
                m.train(training)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise DataError(
                f"{self.name} features are NaN/inf for {int(bad.sum())} images (first rows "
                f"{np.flatnonzero(bad)[:5].tolist()}); check the model weights and the input images"
            )
        return out


def _module_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class ClassifierFeatures(_BatchedExtractor):
    """Penultimate-layer features of a classifier trained on the real training split.

    Which layer: the model's own `features(x)` method when it has one (medsyn classifiers; a 4-D
    output is global-average-pooled), otherwise the input of its last `nn.Linear` (e.g. a bare MONAI
    DenseNet121: relu + pool of the last dense block). `weights` is a label recorded in the
    implementation string (e.g. the checkpoint path and hash), so reports say which classifier was used.
    `input_range="signed"` maps [0, 1] images to [-1, 1] for classifiers trained that way.
    `image_shape` (C, H, W) is needed only to probe the feature size of a `features()` method when
    the model has no `feature_dim` attribute. The model is moved to `device` (default: where it is)
    and put in eval mode during extraction only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "classifier",
        weights: str = "",
        input_range: Literal["unit", "signed"] = "unit",
        image_shape: tuple[int, int, int] | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__(batch_size, device or _module_device(model), progress)
        if input_range not in ("unit", "signed"):
            raise ConfigError(f"input_range must be 'unit' or 'signed', got {input_range!r}")
        self.model, self.name, self.input_range = model.to(self.device), name, input_range
        method = getattr(model, "features", None)
        if callable(method) and not isinstance(method, nn.Module):
            self._fn: Callable[[torch.Tensor], torch.Tensor] = method
            layer = "features()"
            self.dim = getattr(model, "feature_dim", None) or self._probe(image_shape)
        else:
            linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError(
                    f"{type(model).__name__} has neither a features(x) method nor a final nn.Linear; "
                    "cannot find its penultimate layer"
                )
            layer_name, linear = linears[-1]
            self._fn, layer, self.dim = self._input_of(linear), f"input of {layer_name}", linear.in_features
        n_params = sum(p.numel() for p in model.parameters())
        self.implementation = (
            f"{type(model).__name__} ({n_params} parameters), layer: {layer}, input {input_range} range"
            + (f", weights: {weights}" if weights else "")
        )

    def _modules(self) -> list[nn.Module]:
        return [self.model]

    def _input_of(self, linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            captured: list[torch.Tensor] = []
            handle = linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            try:
                self.model(x)
            finally:
                handle.remove()
            return captured[-1]

        return run

    def _probe(self, image_shape: tuple[int, int, int] | None) -> int:
        if image_shape is None:
            raise ConfigError(f"{type(self.model).__name__} has no feature_dim; pass image_shape=(C, H, W) to probe it")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return int(self._pooled(torch.zeros((1, *image_shape), device=self.device)).shape[1])
        finally:
            self.model.train(was_training)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        f = self._fn(x)
        return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.ndim == 4 else f.flatten(1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x * 2 - 1 if self.input_range == "signed" else x)


# ------------------------------------------------------------------------- weights from local files


def load_local_weights(path: str | Path, what: str, hint: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a local .safetensors or torch .pt/.pth file, and the file's sha256 (first 16).

    Never downloads: a missing file is a ConfigError saying where to put it (`hint`).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} weights not found at {p}: {hint} (medsyn never downloads weights)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means a bad file, which the user can fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: cannot read {what} weights ({first}); expected a state dict saved as .safetensors "
            "or with torch.save(model.state_dict())"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: {what} weights must be a state dict (name -> tensor)")
    digest = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, digest.hexdigest()[:16]


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, ignorable: tuple[str, ...]) -> None:
    """Load all of `model`'s weights; extra keys are allowed only under the `ignorable` prefixes."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__} (size mismatch)") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.startswith(ignorable)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a {type(model).__name__} state dict ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )


class TorchXRayVisionFeatures(_BatchedExtractor):
    """torchxrayvision DenseNet121 (e.g. `densenet121-res224-all`), features of its pooled last layer.

    The file must be a state dict (the torchxrayvision release files are pickled whole models: convert
    once with `torch.save(model.state_dict(), path)` or safetensors where torchxrayvision is installed).
    Keys are mapped onto MONAI's DenseNet121. Pre-processing follows torchxrayvision: grey scale,
    resize to 224 px (bilinear, antialiased), intensities scaled to [-1024, 1024]; features are
    relu + global average pool of `norm5` (1024-d), as `model.features2()` in torchxrayvision.
    """

    name = "xrv-densenet121"
    dim = 1024
    _DENSELAYER = re.compile(r"^(.*denselayer\d+)\.(?:layers\.)?(norm|relu|conv)\.?([12])\.(.+)$")

    def __init__(
        self,
        weights: str | Path,
        *,
        resolution: int = 224,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        super().__init__(batch_size, device, progress)
        state, sha = load_local_weights(
            weights,
            "TorchXRayVision DenseNet121",
            "save the torchxrayvision model's state_dict there (.safetensors or .pt), or pass the path of your copy",
        )
        state = {self._monai_key(k): v for k, v in state.items()}
        if "class_layers.out.weight" not in state:
            raise CheckpointError(f"{weights}: no classifier.weight; not a torchxrayvision DenseNet state dict")
        outputs = state["class_layers.out.weight"].shape[0]
        self.model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=outputs)
        _load_strict(self.model, state, Path(weights), ignorable=("op_threshs",))
        self.model.to(self.device).eval()
        self.resolution = resolution
        self.implementation = (
            f"torchxrayvision DenseNet121 ({Path(weights).name}, sha256 {sha}) in MONAI DenseNet121; "
            f"grey {resolution}px bilinear-antialiased, [-1024, 1024]; relu+avgpool(norm5), 1024-d"
        )

    @classmethod
    def _monai_key(cls, key: str) -> str:
        if key.startswith("classifier."):
            return "class_layers.out." + key.removeprefix("classifier.")
        return cls._DENSELAYER.sub(r"\1.layers.\2\3.\4", key)

    def _modules(self) -> list[nn.Module]:
        return [self.model]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=1, keepdim=True)
        x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.model.class_layers[:-1](self.model.features((x * 2 - 1) * 1024))


# ------------------------------------------------------------------ Inception-v3 as used for FID


class _Conv(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU; attribute names match torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: Any = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding: count_include_pad=False (the FID patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class _InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = _Conv(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = _Conv(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = _Conv(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = _Conv(c7, 192, row[0], padding=row[1])
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    """`max_pool=True` in the last block: the FID network's (TF graph's) max pool instead of an average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1),
                self.branch_pool(pool),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the TF FID graph up to pool3 (2048-d), with pytorch-fid / torchvision key names."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
            _InceptionA(192, 32),
            _InceptionA(256, 64),
            _InceptionA(288, 64),
        )
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = _InceptionC(768, 128), _InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _InceptionC(768, 160), _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = _InceptionE(1280, max_pool=False), _InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class InceptionFeatures(_BatchedExtractor):
    """pytorch-fid's FID Inception-v3 (`pt_inception-2015-12-05-6726825d.pth`), pool3 features (2048-d).

    Pre-processing as pytorch-fid: grey images repeated to 3 channels, bilinear resize to 299 px
    (no antialiasing), scaled to [-1, 1]. Use it to compare with published FIDs; for radiographs prefer
    `ClassifierFeatures` or `TorchXRayVisionFeatures`, which were trained on chest X-rays.
    """

    name = "inception-v3-fid"
    dim = 2048

    def __init__(
        self,
        weights: str | Path,
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        super().__init__(batch_size, device, progress)
        state, sha = load_local_weights(
            weights,
            "FID Inception-v3",
            "put pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a state dict) there, "
            "or pass the path of your copy",
        )
        self.model = FIDInceptionV3()
        _load_strict(self.model, state, Path(weights), ignorable=("fc.", "AuxLogits."))
        self.model.to(self.device).eval()
        self.implementation = (
            f"pytorch-fid Inception-v3 ({Path(weights).name}, sha256 {sha}); 3x299px bilinear, [-1, 1]; pool3 2048-d"
        )

    def _modules(self) -> list[nn.Module]:
        return [self.model]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.model(x * 2 - 1)


class PixelFeatures(_BatchedExtractor):
    """Raw pixels in [0, 1], area-downsampled to `size` x `size` and flattened (D = channels * size^2).

    Pixel space is where a memorised copy is most obvious; downsampling keeps the search affordable
    (64 px: D = 4096) and ignores sub-pixel noise.
    """

    def __init__(
        self,
        size: int = 64,
        channels: int = 1,
        *,
        batch_size: int = 512,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        super().__init__(batch_size, device, progress)
        if size < 1 or channels < 1:
            raise ConfigError(f"PixelFeatures needs size >= 1 and channels >= 1, got {size}, {channels}")
        self.size, self.channels = size, channels
        self.name, self.dim = f"pixels{size}", channels * size * size
        self.implementation = f"raw pixels in [0, 1], area-downsampled to {channels}x{size}x{size}"

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels or x.shape[-1] < self.size:
            raise DataError(
                f"{self.name}: expected {self.channels}-channel images of at least {self.size} px, "
                f"got shape {tuple(x.shape[1:])}"
            )
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return x.flatten(1)
