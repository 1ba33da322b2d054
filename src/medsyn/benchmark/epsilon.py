"""`medsyn benchmark --sweep epsilon --points inf,10,3,1`: the privacy/utility curve. One generator per target
epsilon (inf: the same network without DP), all of one model, trained on the same real split for the same
number of steps, each drawn and evaluated as `--compare` draws and evaluates a model (`compare.run_model`).

The steps are fixed because DP-SGD calibrates its noise to the planned steps: a run bounded only by time would
plan `compare.UNBOUNDED_STEPS` and drown in noise. `budget_s` is only a safety limit on each point's training;
a point it cuts short is flagged on the page. Each point's OUT/eps-<ε>/ is finished once its result.json holds
the same settings, so a killed sweep continues when rerun; points may be added or left out on a rerun, any
other change of setting is refused. Outputs: results.json, results.csv, epsilon.md, epsilon.png, epsilon.html.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsyn.benchmark.compare import (
    COLUMNS,
    Column,
    Side,
    SideSettings,
    auroc_text,
    fmt,
    prepared_cache,
    run_model,
    table,
)
from medsyn.benchmark.report import attack_keys, epsilon_label, write_epsilon_report
from medsyn.benchmark.sweep import write_rows
from medsyn.errors import ConfigError
from medsyn.io import write_json_atomic, write_text_atomic
from medsyn.report.markup import round_up
from medsyn.train import TrainConfig

INF = math.inf


def parse_points(text: str) -> list[float]:
    """'inf,10,3,1' -> [inf, 10.0, 3.0, 1.0]: target epsilons (inf: no DP), each once, largest first."""
    points = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--points: target epsilons are positive numbers or inf, got {item!r}") from None
        if not value > 0:  # NaN fails this too
            raise ConfigError(f"--points: a target epsilon must be positive (or inf for no DP), got {item!r}")
        points.append(value)
    if not points:
        raise ConfigError("--points: give target epsilons, e.g. inf,10,3,1")
    if len(set(points)) != len(points):
        raise ConfigError(f"--points lists an epsilon twice: {text}")
    return sorted(points, reverse=True)


def point_name(epsilon: float) -> str:
    """The point's folder: eps-inf, eps-10, eps-0.5."""
    return f"eps-{epsilon:g}"


@dataclass(kw_only=True)
class EpsilonConfig(SideSettings):
    """An epsilon sweep: `model` trained `steps` steps at every target epsilon of `points` (inf: no DP)."""

    points: list[float]
    steps: int
    model: str = "cgan"
    width: int = 32
    model_extra: dict[str, Any] = field(default_factory=dict)
    budget_s: float | None = None  # a safety limit on each point's training time, not the schedule
    dp_delta: float | None = None  # None: 0.1 / training images (or patients)
    dp_max_grad_norm: float | None = None  # None: 1.0
    dp_unit: str | None = None  # image (default) or patient

    def validate(self) -> None:
        """Every point's training settings are checked before the first point trains (a refused model, a bad
        delta or unit is one line now, not after hours of the no-DP point)."""
        if not self.points or any(not p > 0 for p in self.points) or len(set(self.points)) != len(self.points):
            raise ConfigError(f"epsilon points must be distinct positive numbers or inf, got {self.points}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"--sweep epsilon needs --steps as a positive integer, got {self.steps!r}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ConfigError(f"the training budget must be positive, got {self.budget_s}")
        super().validate()
        for side in self.sides():
            self.train_config(Path(self.data), side).validate()

    def network(self) -> dict[str, Any]:
        """model_extra of every point: the network DP training uses (e.g. cgan's GroupNorm discriminator without
        minibatch-stddev) for the no-DP point too, so the curve measures DP-SGD and not a change of network."""
        probe = TrainConfig(data=self.data, model=self.model, size=self.size, model_extra=self.model_extra,
                            dp_epsilon=1.0)  # fmt: skip
        return probe.resolved().model_extra

    def sides(self) -> list[Side]:
        extra = self.network()
        return [Side(point_name(p), self.model, self.width, extra, None if p == INF else p)
                for p in sorted(self.points, reverse=True)]  # fmt: skip

    def schedule(self, side: Side) -> dict[str, Any]:
        dp = {"dp_delta": self.dp_delta, "dp_max_grad_norm": self.dp_max_grad_norm, "dp_unit": self.dp_unit}
        return {"steps": self.steps, "time_limit_s": self.budget_s, **(dp if side.dp_epsilon is not None else {})}

    def side_key(self, side: Side) -> dict[str, Any]:
        """The sweep's settings without the point list (a rerun may add points) or the device, and the point."""
        return {"config": _settings(self) | {"budget_s": self.budget_s}, "side": asdict(side)}


def _settings(cfg: EpsilonConfig) -> dict[str, Any]:
    """The settings every point of one OUT folder must share (the budget may grow on a rerun)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("points", "device", "budget_s")}))


def _same_settings(cfg: EpsilonConfig, out: Path) -> None:
    """Refuse a rerun into `out` with other settings: a point trained for other steps would resume with a
    noise calibrated for those, and the curve would mix them."""
    stored, now = out / "config.json", _settings(cfg)
    try:
        before = json.loads(stored.read_text())
    except FileNotFoundError:
        write_json_atomic(stored, now)
        return
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{stored}: unreadable sweep settings ({exc})") from None
    changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} holds an epsilon sweep with other settings ({', '.join(changed)}); use a new --out")


def _spent(r: dict[str, Any]) -> str:
    """Epsilon spent, rounded up (never printed below itself), with its delta."""
    dp = r.get("differential_privacy")
    return f"{round_up(dp['epsilon'])} (δ {dp['delta']:.2g})" if dp else "none"


def _attack(key: str) -> Column:
    """The markdown cell of one membership-inference attack: AUROC [95% CI] (TPR at 1% FPR)."""

    def cell(r: dict[str, Any]) -> str:
        e = r["summary"].get("membership", {}).get(key) or {}
        if "auroc" not in e:
            return "skipped" if e else "n/a"
        return f"{auroc_text(e)} ({fmt(e['tpr_at_1pct_fpr'])})"

    return cell


def _training(r: dict[str, Any]) -> str:
    p = r.get("progress") or {}
    return f"{fmt(p.get('train_seconds'), 0)} ({p.get('steps')}, {p.get('stop_reason')})"


def columns(results: list[dict[str, Any]]) -> dict[str, Column]:
    """epsilon.md's columns: what DP spent, compare's utility and diversity columns, every attack, the verdicts."""
    utility = ("TSTR/TRTR [95% CI]", "TRTR", "TSTR", "recall", "coverage", "FID (real vs real)")
    return {
        "target ε": lambda r: epsilon_label(r["side"]["dp_epsilon"]),
        "ε spent (δ)": _spent,
        "noise σ": lambda r: fmt((r.get("differential_privacy") or {}).get("noise_multiplier")),
        **{h: COLUMNS[h] for h in utility},
        **{f"MIA {k}: AUROC [95% CI] (TPR@1%FPR)": _attack(k) for k in attack_keys(results)},
        **{h: COLUMNS[h] for h in ("privacy checks failing", "verdicts (useful/realistic/private)")},
        "train s (steps, stop)": _training,
    }  # fmt: skip


def _row(r: dict[str, Any], attacks: list[str]) -> dict[str, Any]:
    """One results.csv row: a point's privacy, utility, diversity and every attack, as plain numbers."""
    s, p, dp = r["summary"], r.get("progress") or {}, r.get("differential_privacy") or {}
    target = r["side"]["dp_epsilon"]
    row: dict[str, Any] = {
        "epsilon_target": "inf" if target is None else f"{target:g}", "epsilon_spent": dp.get("epsilon"),
        "delta": dp.get("delta"), "noise_multiplier": dp.get("noise_multiplier"),
        "max_grad_norm": dp.get("max_grad_norm"), "dp_unit": dp.get("unit"), "steps": p.get("steps"),
        "train_seconds": p.get("train_seconds"), "stop_reason": p.get("stop_reason"),
        **{f"{k}{suffix}": v for k in ("ratio", "trtr", "tstr") for suffix, v in zip(("", "_ci_low", "_ci_high"), s[k], strict=True)},
        "recall": s["recall"], "coverage": s["coverage"], "fid": s["fid"], "fid_real_vs_real": s["fid_real_vs_real"],
        **{k: s["verdicts"].get(k) for k in ("useful", "realistic", "private")},
        "privacy_checks_failing": ";".join(c["check"] for c in s["privacy_checks"] if c["level"] == "fail"),
    }  # fmt: skip
    for key in attacks:
        e, name = s.get("membership", {}).get(key) or {}, "mia_" + "_".join(key.split())
        row.update({f"{name}_{f}": e.get(f) for f in ("auroc", "ci_low", "ci_high", "tpr_at_1pct_fpr")})
    return row


def run_epsilon_sweep(cfg: EpsilonConfig, out: str | os.PathLike[str], quiet: bool = False) -> dict[str, Any]:
    """Train, generate and evaluate every point of `cfg` in turn (resumable); write results.json, results.csv,
    epsilon.md, epsilon.png and epsilon.html."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _same_settings(cfg, out)
    cache = prepared_cache(cfg, out, quiet)
    results = [run_model(cfg, cache, side, out / side.name, quiet) for side in cfg.sides()]
    config = asdict(cfg) | {
        "points": [epsilon_label(None if p == INF else p) for p in sorted(cfg.points, reverse=True)]
    }
    summary = {"config": config, "cache": str(cache), "points": results}  # points as text: JSON has no infinity
    write_json_atomic(out / "results.json", summary)
    attacks = attack_keys(results)
    rows = [_row(r, attacks) for r in results]
    write_rows(rows, list(rows[0]), out / "results.csv")
    write_text_atomic(out / "epsilon.md", table(results, columns(results)))
    write_epsilon_report(summary, out)
    return summary
