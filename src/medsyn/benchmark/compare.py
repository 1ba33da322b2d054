"""`medsyn benchmark --compare cgan,ddpm`: several model kinds on the same real split and the same training
wall budget, each generated and evaluated the same way, in one table ("GAN or diffusion on *my* data?").

Each model gets OUT/<model>/{run,synthetic,evaluation} and is finished once OUT/<model>/result.json exists
for the same settings; a killed comparison is run again with the same command and continues (a half-trained
model resumes, its budget counting the time already spent). The synthetic set has the size and label
distribution of the real training set (or `n` images with that distribution), so TSTR compares like with like. OUT/results.json holds every
model's figures; OUT/compare.md the table; OUT/compare.html the table and each model's sample grid.
"""

from __future__ import annotations

import json
import os
import shutil
import time
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
class CompareConfig:
    """One comparison: `models` trained for `budget_s` seconds each on `data` (spec or prepared cache)."""

    data: str
    models: list[str]
    budget_s: float
    size: int = 28
    width: int = 32
    batch: int = 64
    seed: int = 0
    device: str = "cpu"
    widths: dict[str, int] = field(default_factory=dict)  # per model name; others get `width`
    model_extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model name
    n: int | None = None  # synthetic images per model (None: as many as real training images)
    ddim_steps: int | None = None  # diffusion sampling (None: the model's default)
    guidance: float | None = None
    quick: bool = True  # evaluation: the small CNN (False: DenseNet121)
    settings: dict[str, Any] | None = None  # evaluation setting overrides (see EvalSettings.make)

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"--compare needs model names from {', '.join(MODELS)}; got {','.join(self.models)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--compare lists a model twice: {','.join(self.models)}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"--n must be positive, got {self.n}")
        if not self.budget_s > 0:
            raise ConfigError(f"the training budget must be positive, got {self.budget_s}")


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


def _cache(cfg: CompareConfig, out: Path, quiet: bool) -> Path:
    """The prepared real data every model trains on and is judged against (one split for all)."""
    if (Path(cfg.data) / "meta.json").is_file():
        return Path(cfg.data).absolute()
    target = out / "cache"
    if not (target / "meta.json").is_file():
        prepare(cfg.data, cfg.size, target, seed=cfg.seed, quiet=quiet)
    return target.absolute()


def _train_config(cfg: CompareConfig, cache: Path, model: str) -> TrainConfig:
    return TrainConfig(
        data=str(cache), model=model, size=cfg.size, steps=UNBOUNDED_STEPS, time_limit_s=cfg.budget_s,
        batch=cfg.batch, width=cfg.widths.get(model, cfg.width), model_extra=dict(cfg.model_extra.get(model, {})), seed=cfg.seed,
        device=cfg.device, sample_every=1000, ckpt_every=500, log_every=25,
    )  # fmt: skip


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """fn's result and its wall seconds with the 1-minute load average before and after (shared machine)."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    result = fn(*args, **kw)
    return result, {"wall_s": round(time.perf_counter() - t0, 2), "load_before": load0,
                    "load_after": os.getloadavg()[0]}  # fmt: skip


def run_model(cfg: CompareConfig, cache: Path, model: str, folder: Path, quiet: bool) -> dict[str, Any]:
    """Train (or resume), generate and evaluate one model; its result.json makes a rerun skip it."""
    done_file, key = folder / "result.json", {"config": asdict(cfg), "model": model}
    try:
        done = json.loads(done_file.read_text())
        if done.get("key") == json.loads(json.dumps(key)):
            return done
    except (OSError, ValueError):
        pass
    run = folder / "run"
    tcfg = _train_config(cfg, cache, model)
    _, train_t = _timed(train, tcfg, run, resume=(run / RUN_FILE).is_file(), quiet=quiet)
    meta = read_run_meta(run)
    n = cfg.n or int(meta["labels"]["train_images"])
    shutil.rmtree(folder / "synthetic", ignore_errors=True)  # a set drawn before a kill: draw it again, timed
    _, gen_t = _timed(generate, run, n, folder / "synthetic", seed=cfg.seed, device=cfg.device, quiet=quiet,
                      ddim_steps=cfg.ddim_steps if MODELS[model].family == "diffusion" else None,
                      guidance=cfg.guidance if MODELS[model].family == "diffusion" else None)  # fmt: skip
    manifest = json.loads((folder / "synthetic" / "manifest.json").read_text())
    metrics, eval_t = _timed(evaluate, cache, folder / "synthetic", folder / "evaluation", quick=cfg.quick,
                             seed=cfg.seed, device=cfg.device, settings=cfg.settings, quiet=quiet)  # fmt: skip
    result = {
        "key": key,
        "model": model,
        "family": MODELS[model].family,
        "progress": meta.get("progress"),
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
    }


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{v:.{digits}f}"


def _with_ci(t: list[Any]) -> str:
    return f"{_fmt(t[0])} [{_fmt(t[1])}, {_fmt(t[2])}]" if t and t[0] is not None else "n/a"


def table(results: list[dict[str, Any]]) -> str:
    """The markdown comparison table (one row per model)."""
    head = ["model", "TSTR/TRTR [95% CI]", "TRTR", "TSTR", "recall", "coverage", "FID (real vs real)",
            "privacy checks failing", "verdicts (useful/realistic/private)", "train s (steps)", "sample s (img/s)",
            "load 1-min (train)"]  # fmt: skip
    rows = []
    for r in results:
        s, p, g = r["summary"], r.get("progress") or {}, r["generate"]
        failing = [c["check"] for c in s["privacy_checks"] if c["level"] == "fail"]
        v = s["verdicts"]
        rows.append([
            r["model"], _with_ci(s["ratio"]), _with_ci(s["trtr"]), _with_ci(s["tstr"]), _fmt(s["recall"]),
            _fmt(s["coverage"]), f"{_fmt(s['fid'], 2)} ({_fmt(s['fid_real_vs_real'], 2)})",
            ", ".join(failing) or f"none of {len(s['privacy_checks'])}",
            "/".join(str(v.get(k, "n/a")) for k in ("useful", "realistic", "private")),
            f"{_fmt(p.get('train_seconds'), 0)} ({p.get('steps', 'n/a')})", f"{_fmt(g['wall_s'], 0)} ({_fmt(g['img_per_s'], 1)})",
            f"{_fmt(r['train']['load_before'], 2)} → {_fmt(r['train']['load_after'], 2)}",
        ])  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(map(str, row)) + " |" for row in rows)]) + "\n"


def run_compare(cfg: CompareConfig, out: str | os.PathLike[str], quiet: bool = False) -> dict[str, Any]:
    """Train, generate and evaluate every model of `cfg` in turn (resumable); write results.json, compare.md."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = _cache(cfg, out, quiet)
    results = [run_model(cfg, cache, m, out / m, quiet) for m in cfg.models]
    summary = {"config": asdict(cfg), "cache": str(cache), "models": results}
    write_json_atomic(out / "results.json", summary)
    write_text_atomic(out / "compare.md", table(results))
    write_compare_report(summary, out)
    return summary
