"""Feature extractors for fidelity and privacy metrics, all offline.

Every extractor maps images (N, C, H, W), uint8 or float in [0, 1], to float64 features (N, D), in
batches (memory bounded by `batch_size`, memmaps are never read whole), and carries a `name` and an
`implementation` string that every metric copies into its result: an FID is meaningless without
knowing which network produced the features.

* `ClassifierFeatures`: penultimate layer of a classifier trained on the REAL training split (the
  utility classifiers). Always available; the recommended backbone for chest radiographs, since
  ImageNet-Inception features measure the wrong things on X-rays.
* `TorchXRayVisionFeatures`: the torchxrayvision DenseNet121 (CXR-pretrained), from a LOCAL weights file.
* `InceptionFeatures` (in `medsyn.evaluate.inception`): the pytorch-fid Inception-v3 (TF 2015 FID weights), from a LOCAL weights file,
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
from medsyn.evaluate.data import as_unit_tensor, batches, check_images
from medsyn.progress import progress_bar


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (N, C, H, W) float in [0, 1] (or uint8) -> float64 (N, dim)."""

    name: str
    dim: int
    implementation: str

    def __call__(self, images: Any, out: np.ndarray | None = None) -> np.ndarray: ...


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

    def __call__(self, images: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Features (N, dim) of `images`: float64, or written into `out` (e.g. a float32 memmap) and returned."""
        images = check_images(images, f"{self.name} feature input")
        if out is None:
            out = np.empty((len(images), self.dim), dtype=np.float64)
        elif out.shape != (len(images), self.dim):
            raise ConfigError(f"{self.name}: output array of shape {out.shape}, expected {(len(images), self.dim)}")
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
