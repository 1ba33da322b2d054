"""`medsyn benchmark --compare cgan,ddpm`: several model kinds on the same real split and the same training
wall budget, each generated and evaluated the same way, in one table ("GAN or diffusion on *my* data?").

Each model is one `Side`, and `run_model` trains, generates and evaluates a side; the epsilon sweep
(epsilon.py) reuses it with one side per target epsilon. Each model gets OUT/<model>/{run,synthetic,evaluation}
and is finished once OUT/<model>/result.json exists for the same settings; a killed comparison is run again
with the same command and continues (a half-trained model resumes, its budget counting the time already spent).
The synthetic set has the size and label distribution of the real training set (or `n` images with that
distribution), so TSTR compares like with like. OUT/results.json holds every model's figures; OUT/compare.md
the table; OUT/compare.html the table and each model's sample grid.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsyn.benchmark.report import write_compare_report
from medsyn.data.cache import prepare
from medsyn.errors import ConfigError
from medsyn.evaluate import evaluate
from medsyn.generate import generate
from medsyn.io import write_json_atomic, write_text_atomic
from medsyn.models import MODELS
from medsyn.train import TrainConfig, train
from medsyn.train.run import RUN_FILE, read_run_meta

UNBOUNDED_STEPS = 10**9  # training is stopped by the wall budget, never by the step count


@dataclass
class Side:
    """One generator of a comparison: a model kind at a width, trained with DP-SGD to `dp_epsilon` (None: no DP).
    `name` is its folder under OUT and its row in the table."""

    name: str
    model: str
    width: int
    model_extra: dict[str, Any] = field(default_factory=dict)
    dp_epsilon: float | None = None


@dataclass(kw_only=True)
class SideSettings(ABC):
    """What every side of a comparison shares: the real data (one split for all), batch and seed, and how each
    synthetic set is drawn and judged. A subclass says which sides there are and how long each trains."""

    data: str  # spec or prepared cache
    size: int = 28
    batch: int = 64
    seed: int = 0
    device: str = "cpu"
    n: int | None = None  # synthetic images per side (None: as many as real training images)
    ddim_steps: int | None = None  # diffusion sampling (None: the model's default)
    guidance: float | None = None
    quick: bool = True  # evaluation: the small CNN (False: DenseNet121)
    settings: dict[str, Any] | None = None  # evaluation setting overrides (see EvalSettings.make)

    @abstractmethod
    def sides(self) -> list[Side]:
        """The generators to train, in table order."""

    @abstractmethod
    def schedule(self, side: Side) -> dict[str, Any]:
        """TrainConfig fields of `side` beyond the shared ones: how long it trains and its DP settings."""

    @abstractmethod
    def side_key(self, side: Side) -> dict[str, Any]:
        """What a finished side's result.json must hold to be kept on a rerun (JSON-ready)."""

    def validate(self) -> None:
        if self.n is not None and self.n < 1:
            raise ConfigError(f"--n must be positive, got {self.n}")

    def train_config(self, cache: Path, side: Side) -> TrainConfig:
        return TrainConfig(
            data=str(cache), model=side.model, size=self.size, batch=self.batch, width=side.width,
            model_extra=dict(side.model_extra), seed=self.seed, device=self.device, sample_every=1000, ckpt_every=500,
            log_every=25, dp_epsilon=side.dp_epsilon, **self.schedule(side),
        )  # fmt: skip


@dataclass(kw_only=True)
class CompareConfig(SideSettings):
    """One comparison: `models` trained for `budget_s` seconds each on `data` (spec or prepared cache)."""

    models: list[str]
    budget_s: float
    width: int = 32
    widths: dict[str, int] = field(default_factory=dict)  # per model name; others get `width`
    model_extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model name

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"--compare needs model names from {', '.join(MODELS)}; got {','.join(self.models)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--compare lists a model twice: {','.join(self.models)}")
        super().validate()
        if not self.budget_s > 0:
            raise ConfigError(f"the training budget must be positive, got {self.budget_s}")

    def sides(self) -> list[Side]:
        return [Side(m, m, self.widths.get(m, self.width), dict(self.model_extra.get(m, {}))) for m in self.models]

    def schedule(self, side: Side) -> dict[str, Any]:
        return {"steps": UNBOUNDED_STEPS, "time_limit_s": self.budget_s}

    def side_key(self, side: Side) -> dict[str, Any]:
        return {"config": asdict(self), "model": side.model}


def parse_models(text: str) -> tuple[list[str], dict[str, int]]:
    """'cgan,ddpm:16' -> (['cgan', 'ddpm'], {'ddpm': 16}): a model may carry its own width."""
    models, widths = [], {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, width = item.partition(":")
        models.append(name.strip())
        if width:
            try:
                widths[name.strip()] = int(width)
            except ValueError:
                raise ConfigError(f"--compare: width of {name} must be an integer, got {width!r}") from None
    return models, widths


def prepared_cache(cfg: SideSettings, out: Path, quiet: bool) -> Path:
    """The prepared real data every side trains on and is judged against (one split for all)."""
    if (Path(cfg.data) / "meta.json").is_file():
        return Path(cfg.data).absolute()
    target = out / "cache"
    if not (target / "meta.json").is_file():
        prepare(cfg.data, cfg.size, target, seed=cfg.seed, quiet=quiet)
    return target.absolute()


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """fn's result and its wall seconds with the 1-minute load average before and after (shared machine)."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    result = fn(*args, **kw)
    return result, {"wall_s": round(time.perf_counter() - t0, 2), "load_before": load0,
                    "load_after": os.getloadavg()[0]}  # fmt: skip


def run_model(cfg: SideSettings, cache: Path, side: Side, folder: Path, quiet: bool) -> dict[str, Any]:
    """Train (or resume), generate and evaluate one side; its result.json makes a rerun skip it."""
    done_file, key = folder / "result.json", cfg.side_key(side)
    try:
        done = json.loads(done_file.read_text())
        if done.get("key") == json.loads(json.dumps(key)):
            return done
    except (OSError, ValueError):
        pass
    run, diffusion = folder / "run", MODELS[side.model].family == "diffusion"
    _, train_t = _timed(train, cfg.train_config(cache, side), run, resume=(run / RUN_FILE).is_file(), quiet=quiet)
    meta = read_run_meta(run)
    n = cfg.n or int(meta["labels"]["train_images"])
    shutil.rmtree(folder / "synthetic", ignore_errors=True)  # a set drawn before a kill: draw it again, timed
    _, gen_t = _timed(generate, run, n, folder / "synthetic", seed=cfg.seed, device=cfg.device, quiet=quiet,
                      ddim_steps=cfg.ddim_steps if diffusion else None, guidance=cfg.guidance if diffusion else None)  # fmt: skip
    manifest = json.loads((folder / "synthetic" / "manifest.json").read_text())
    metrics, eval_t = _timed(evaluate, cache, folder / "synthetic", folder / "evaluation", quick=cfg.quick,
                             seed=cfg.seed, device=cfg.device, settings=cfg.settings, quiet=quiet, run=run)  # fmt: skip
    result = {
        "key": key,
        "name": side.name,
        "model": side.model,
        "family": MODELS[side.model].family,
        "side": asdict(side),
        "progress": meta.get("progress"),
        "differential_privacy": meta.get("differential_privacy"),  # epsilon spent, delta, sigma; None without DP
        "runtime": meta.get("runtime"),
        "train": train_t,
        "generate": {
            **gen_t,
            "images": n,
            "img_per_s": round(n / gen_t["wall_s"], 2) if gen_t["wall_s"] else None,
            "sampling": manifest.get("sampling"),
        },  # fmt: skip
        "evaluate": eval_t,
        "summary": summarise(metrics),
        "metrics_file": str((folder / "evaluation" / "metrics.json").absolute()),
        "samples": _last_png(run / "samples"),
        "reconstructions": _last_png(run / "autoencoder" / "samples"),  # ldm's first stage; None for the others
    }
    write_json_atomic(done_file, result)
    return result


def _last_png(folder: Path) -> str | None:
    grids = sorted(folder.glob("step-*.png"))
    return str(grids[-1]) if grids else None


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def summarise(m: dict[str, Any]) -> dict[str, Any]:
    """The figures the comparison table shows, from one evaluation's metrics (None where not assessed)."""
    u, f = m.get("utility") or {}, m.get("fidelity") or {}
    ratio = _dig(u, "ratio", "tstr_over_trtr") or {}
    checks = _dig(m, "privacy", "checks") or []
    return {
        "trtr": [_dig(u, "trtr", k) for k in ("mean_auroc", "mean_ci_low", "mean_ci_high")],
        "tstr": [_dig(u, "tstr", k) for k in ("mean_auroc", "mean_ci_low", "mean_ci_high")],
        "ratio": [ratio.get(k) for k in ("value", "ci_low", "ci_high")],
        "recall": _dig(f, "prdc", "recall"),
        "coverage": _dig(f, "prdc", "coverage"),
        "prdc_k": _dig(f, "prdc", "k"),
        "fid": _dig(f, "fid", "fid"),
        "fid_real_vs_real": _dig(f, "fid", "baseline", "real_vs_real"),
        "fid_synthetic_vs_real_at_n": _dig(f, "fid", "baseline", "synthetic_vs_real"),
        "privacy_checks": [{"check": c.get("check"), "level": c.get("level")} for c in checks],
        "verdicts": {k: v.get("level") for k, v in (m.get("verdicts") or {}).items()},
        "membership": membership_attacks(m),
    }


MIA_FIELDS = ("auroc", "ci_low", "ci_high", "tpr_at_1pct_fpr", "attack", "space")


def membership_attacks(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every membership-inference attack of one evaluation by its metrics.json key ("pixel", "feature", ...):
    its AUROC with CI and TPR at 1% FPR, or why it was skipped. Read generically, so that an attack added to
    the evaluation shows up in the tables without a change here."""
    attacks = _dig(m, "privacy", "membership_inference") or {}
    return {key: {k: e.get(k) for k in MIA_FIELDS} if "auroc" in e else {"skipped": e.get("skipped")}
            for key, e in attacks.items() if isinstance(e, dict)}  # fmt: skip


def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{v:.{digits}f}"


def with_ci(t: list[Any]) -> str:
    return f"{fmt(t[0])} [{fmt(t[1])}, {fmt(t[2])}]" if t and t[0] is not None else "n/a"


def _failing(r: dict[str, Any]) -> str:
    checks = r["summary"]["privacy_checks"]
    return ", ".join(c["check"] for c in checks if c["level"] == "fail") or f"none of {len(checks)}"


def auroc_text(e: dict[str, Any]) -> str:
    """One membership attack's AUROC [95% CI] (an entry of a summary's `membership`)."""
    return with_ci([e["auroc"], e["ci_low"], e["ci_high"]])


def _attacks(r: dict[str, Any]) -> str:
    """Every membership attack that ran: its key and AUROC [95% CI]."""
    runs = {k: e for k, e in r["summary"].get("membership", {}).items() if e.get("auroc") is not None}
    return "; ".join(f"{k} {auroc_text(e)}" for k, e in runs.items()) or "n/a"


def _verdicts(r: dict[str, Any]) -> str:
    return "/".join(str(r["summary"]["verdicts"].get(k, "n/a")) for k in ("useful", "realistic", "private"))


Column = Callable[[dict[str, Any]], str]
#: The comparison table's columns: header -> the cell of one side's result (the epsilon sweep picks from these).
COLUMNS: dict[str, Column] = {
    "model": lambda r: r["model"],
    "TSTR/TRTR [95% CI]": lambda r: with_ci(r["summary"]["ratio"]),
    "TRTR": lambda r: with_ci(r["summary"]["trtr"]),
    "TSTR": lambda r: with_ci(r["summary"]["tstr"]),
    "recall": lambda r: fmt(r["summary"]["recall"]),
    "coverage": lambda r: fmt(r["summary"]["coverage"]),
    "FID (real vs real)": lambda r: f"{fmt(r['summary']['fid'], 2)} ({fmt(r['summary']['fid_real_vs_real'], 2)})",
    "privacy checks failing": _failing,
    "membership attacks (AUROC)": _attacks,
    "verdicts (useful/realistic/private)": _verdicts,
    "train s (steps)": lambda r: f"{fmt((r.get('progress') or {}).get('train_seconds'), 0)} "
                                 f"({(r.get('progress') or {}).get('steps', 'n/a')})",
    "sample s (img/s)": lambda r: f"{fmt(r['generate']['wall_s'], 0)} ({fmt(r['generate']['img_per_s'], 1)})",
    "load 1-min (train)": lambda r: f"{fmt(r['train']['load_before'], 2)} → {fmt(r['train']['load_after'], 2)}",
}  # fmt: skip


def table(results: list[dict[str, Any]], columns: Mapping[str, Column] = COLUMNS) -> str:
    """A markdown table: one row per side, a column per (header, cell) of `columns`."""
    rows = ["| " + " | ".join(cell(r) for cell in columns.values()) + " |" for r in results]
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]) + "\n"


def run_compare(cfg: CompareConfig, out: str | os.PathLike[str], quiet: bool = False) -> dict[str, Any]:
    """Train, generate and evaluate every model of `cfg` in turn (resumable); write results.json, compare.md."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = prepared_cache(cfg, out, quiet)
    results = [run_model(cfg, cache, side, out / side.name, quiet) for side in cfg.sides()]
    summary = {"config": asdict(cfg), "cache": str(cache), "models": results}
    write_json_atomic(out / "results.json", summary)
    write_text_atomic(out / "compare.md", table(results))
    write_compare_report(summary, out)
    return summary
