"""`TrainConfig`: every setting of a training run, the same object on the CLI, in Python and in YAML.

`config.yaml` in a run folder is this object with the model's defaults filled in, so
`medsyn train --config RUN/config.yaml --out NEW` repeats the run even if a later medsyn changes a default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from medsyn.data.spec import parse_spec
from medsyn.errors import ConfigError
from medsyn.models import MODELS
from medsyn.models.augment import DEFAULT_POLICY

LOSSES = ("ns", "hinge", "wgan-gp")
AUGMENTS = ("none", "diffaugment", "ada")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
#: Settings a resumed run may change without invalidating its checkpoint (schedule, logging, hardware).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "time_limit_s",
        "sample_every",
        "ckpt_every",
        "log_every",
        "workers",
        "device",
        "precision",
        "channels_last",
        "stage",
    }
)
STAGES = ("both", "masks", "images")
#: Models whose discriminator uses BatchNorm by default; a gradient penalty is ill-defined with batch
#: statistics (Gulrajani et al. 2017), so wgan-gp switches their critic to no normalisation.
_BATCHNORM_CRITICS = ("dcgan", "cgan", "acgan")
#: Models `--dp-epsilon` trains privately (train/privacy.py): the networks that read real images are a DCGAN-family
#: discriminator, the ddpm denoiser, or twostage's mask discriminator, painter and pair discriminator. stylegan2's
#: discriminator (minibatch-stddev, R1 by default) and ldm (its autoencoder reads real images too) are refused
#: rather than given a guarantee that would not hold.
DP_MODELS = ("cgan", "acgan", "ddpm", "twostage")
#: Models whose discriminators DP switches to GroupNorm and no minibatch-stddev channel (both mix a batch's images).
_DP_RENORMED = (*_BATCHNORM_CRITICS, "twostage")


@dataclass
class TrainConfig:
    """A training run. `None` means "the model's default" (see `medsyn.models.MODELS`)."""

    data: str  # dataset spec (e.g. 'nih:/data/cxr14') or a prepared cache folder
    model: str = "cgan"
    size: int = 64
    steps: int = 10_000
    time_limit_s: float | None = None  # stop once this much training time is spent (all sessions together)
    batch: int = 64
    width: int = 64
    z_dim: int = 100
    model_extra: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] | None = None
    r1_gamma: float | None = None
    r1_every: int = 16  # lazy R1 (Karras et al. 2020): penalty every k steps, scaled by k
    ema_decay: float = 0.999
    augment: str = "none"
    augment_policy: str = DEFAULT_POLICY
    ada_target: float = 0.6
    precision: str = "auto"
    channels_last: bool | None = None  # None: on where it is faster (reduced precision)
    device: str = "auto"
    seed: int = 0
    classes: list[str] | None = None  # train on a subset of the data's classes
    cache: str | None = None  # where a spec is prepared; default RUN/../.medsyn-cache
    split_seed: int = 0
    sample_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, up to 4 per GPU
    max_rollbacks: int = 3  # divergence guard: consecutive NaN/inf rollbacks before giving up
    dp_epsilon: float | None = None  # differentially private training (DP-SGD) to this epsilon; None: off
    dp_delta: float | None = None  # DP delta; None: 1 / (10 N) for N training images
    dp_max_grad_norm: float | None = None  # per-sample gradient clipping norm C; None: 1.0 with DP
    dp_unit: str | None = None  # what DP protects: "image" (one training image) or "patient"; None: image with DP
    stage: str | None = None  # twostage: which stage(s) this session trains, both | masks | images; None: both

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas) if self.betas is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error so a typo in a YAML file is not ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"train config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train config key(s) {unknown}; known keys: {sorted(known)}")
        if not d.get("data"):
            raise ConfigError("train config needs 'data': a dataset spec or a prepared cache folder")
        kw = dict(d)
        if kw.get("betas") is not None:
            betas = kw["betas"]
            if not isinstance(betas, list | tuple) or len(betas) != 2:
                raise ConfigError(f"betas must be two numbers, got {betas!r}")
            kw["betas"] = (float(betas[0]), float(betas[1]))
        if kw.get("classes") is not None:
            kw["classes"] = [str(c) for c in kw["classes"]]
        kw["model_extra"] = dict(kw.get("model_extra") or {})
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_yaml(self) -> str:
        header = "# medsyn training run; repeat it with: medsyn train --config config.yaml --out NEW_RUN\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], data: str | None = None) -> TrainConfig:
        """`data`: the dataset, over the file's own (a SPEC given beside the file; the file may then leave it out)."""
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if data is not None and isinstance(d, dict):
            d = {**d, "data": data}
        try:
            return cls.from_dict(d)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ checks and defaults
    def validate(self) -> None:
        """Reject impossible settings early, with the offending value in the message."""
        info = MODELS.get(self.model)
        if info is None:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.size not in info.sizes:
            raise ConfigError(f"{self.model}: image size {self.size} unsupported; use one of {list(info.sizes)}")
        for name, choices in (
            ("loss", LOSSES),
            ("augment", AUGMENTS),
            ("precision", PRECISIONS),
            ("device", DEVICES),
        ):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        for name in (
            "steps",
            "batch",
            "width",
            "z_dim",
            "r1_every",
            "sample_every",
            "ckpt_every",
            "log_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.time_limit_s is not None and (
            isinstance(self.time_limit_s, bool)
            or not isinstance(self.time_limit_s, int | float)
            or not self.time_limit_s > 0
        ):
            raise ConfigError(f"time limit must be a positive number of seconds, got {self.time_limit_s!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("lr_g", "lr_d", "r1_gamma"):
            value = getattr(self, name)
            if value is not None and (value < 0 or (value == 0 and name != "r1_gamma")):
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.max_rollbacks < 0:
            raise ConfigError(f"max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if info.family != "gan":
            gan_only = {"loss": self.loss, "lr_d": self.lr_d, "r1_gamma": self.r1_gamma}
            given = [k for k, v in gan_only.items() if v is not None] + ["augment"] * (self.augment != "none")
            if given:
                raise ConfigError(f"{self.model} is a {info.family} model: {', '.join(given)} only apply to GANs")
        self._validate_stages()
        if self.classes is not None and not self.classes:
            raise ConfigError("classes: give at least one class name, or leave it out for all classes")
        self._validate_dp()

    def _validate_stages(self) -> None:
        """--stage and the GAN options twostage's stages cannot use, each refused in one line."""
        if self.stage is not None and self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.model != "twostage":
            if self.stage not in (None, "both"):
                raise ConfigError(f"--stage {self.stage} applies to --model twostage, not {self.model}")
            return
        refused = {"loss wgan-gp": self.loss == "wgan-gp", "augment ada": self.augment == "ada",
                   f"r1_gamma {self.r1_gamma}": bool(self.r1_gamma)}  # fmt: skip
        given = [k for k, bad in refused.items() if bad]
        if given:
            raise ConfigError(f"twostage cannot use {given[0]}: its stages train with the ns or hinge loss, no gradient "
                              "penalty, and at most DiffAugment on Stage I's masks (a painted image must stay aligned "
                              "with its mask)")  # fmt: skip

    def _validate_dp(self) -> None:
        """DP settings (ranges) and what DP-SGD cannot make private here, each refused in one line."""
        if self.dp_epsilon is None:
            given = [k for k in ("dp_delta", "dp_max_grad_norm", "dp_unit") if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} need dp_epsilon (--dp-epsilon) for private training")
            return
        for name, value in (("dp_epsilon", self.dp_epsilon), ("dp_max_grad_norm", self.dp_max_grad_norm)):
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or
                                      not 0 < value < float("inf")):  # fmt: skip
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.dp_delta is not None and (
            not isinstance(self.dp_delta, int | float) or isinstance(self.dp_delta, bool) or not 0 < self.dp_delta < 1
        ):
            raise ConfigError(f"dp_delta must be in (0, 1), got {self.dp_delta!r}")
        if self.dp_unit not in (None, "image", "patient"):
            raise ConfigError(f"dp_unit must be image or patient, got {self.dp_unit!r}")
        if self.model not in DP_MODELS:
            raise ConfigError(
                f"--dp-epsilon supports: {', '.join(DP_MODELS)}; not {self.model} ({_DP_REFUSED[self.model]})"
            )
        why = {
            "augment ada": (
                self.augment == "ada",
                "ADA sets its strength from D's outputs on real images, "
                "a statistic DP-SGD does not privatise; use --augment diffaugment or none",
            ),
            f"r1_gamma {self.r1_gamma}": (
                bool(self.r1_gamma),
                "R1 differentiates D's input gradient, which per-sample gradients (Opacus hooks) cannot",
            ),
            "loss wgan-gp": (
                self.loss == "wgan-gp",
                "the gradient penalty needs a double backward, which "
                "per-sample gradients (Opacus hooks) cannot; use ns or hinge",
            ),
            "precision fp16": (
                self.precision == "fp16",
                "fp16 loss scaling skips steps on overflow, a decision that depends on the data; use bf16 or fp32",
            ),
        }
        refused = [f"{k}: {reason}" for k, (bad, reason) in why.items() if bad]
        if refused:
            raise ConfigError(f"--dp-epsilon cannot be combined with {refused[0]}")
        if self.model == "twostage" and self.model_extra.get("style_dim"):
            raise ConfigError(
                "--dp-epsilon cannot be combined with a twostage style code (style_dim): each mask is "
                "painted twice per step, which the per-pair clipping does not cover; use style_dim 0"
            )
        mbstd = self.model_extra.get("mbstd", 0)
        if mbstd:
            raise ConfigError(
                f"--dp-epsilon needs model_extra mbstd: 0 (got {mbstd!r}): the minibatch-stddev channel mixes the "
                "images of a batch, so one image's gradient would depend on the others and could not be clipped alone"
            )

    def resolved(self) -> TrainConfig:
        """A copy with the model's defaults filled in and absolute data paths (what config.yaml stores)."""
        self.validate()
        info = MODELS[self.model]
        loss = self.loss or info.default_loss
        extra = dict(self.model_extra)
        if loss == "wgan-gp" and self.model in _BATCHNORM_CRITICS:
            extra.setdefault("d_norm", "none")
        if self.dp_epsilon is not None and self.model in _DP_RENORMED:
            extra.setdefault("d_norm", "group")  # BatchNorm mixes a batch's images; GroupNorm is per image
            extra.setdefault("mbstd", 0)  # so does the minibatch-stddev channel
        return replace(
            self,
            data=_absolute_data(self.data),
            cache=str(Path(self.cache).expanduser().absolute()) if self.cache else None,
            loss=loss,
            lr_g=self.lr_g if self.lr_g is not None else info.lr_g,
            lr_d=self.lr_d if self.lr_d is not None else info.lr_d,
            betas=tuple(self.betas) if self.betas is not None else tuple(info.betas),
            r1_gamma=self.r1_gamma if self.r1_gamma is not None else info.r1_gamma,
            model_extra=extra,
            dp_max_grad_norm=self.dp_max_grad_norm if self.dp_epsilon is None or self.dp_max_grad_norm else 1.0,
            dp_unit=self.dp_unit if self.dp_epsilon is None or self.dp_unit else "image",
        )

    def changes_against(self, other: TrainConfig) -> list[str]:
        """Names of settings that differ from `other` and would make resuming `other`'s checkpoint wrong."""
        a, b = self.resolved().to_dict(), other.resolved().to_dict()
        return [k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES]


_DP_REFUSED = {
    "dcgan": "it trains one generator per class, and an image of several classes would pay the budget once per class",
    "stylegan2": "its discriminator's minibatch-stddev layer, R1 penalty and equalised-LR layers are not per-sample",
    "ldm": "its autoencoder reads the real images too and is not trained privately",
}


def _absolute_data(data: str) -> str:
    """Make a cache folder or a spec's file location absolute, so the config works from any directory."""
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        return str(path.absolute())
    spec = parse_spec(data)
    if spec.location and spec.kind != "phantom":
        spec = type(spec)(spec.kind, str(Path(spec.location).expanduser().absolute()), spec.options)
    return str(spec)
