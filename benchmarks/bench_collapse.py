#!/usr/bin/env python3
"""Mode collapse of the cgan on PneumoniaMNIST (28 px): one fix at a time, measured (issue 11 item 1).

Each variant is the old cgan default plus one change (or a named combination). Per variant, with the real
`medsyn` commands: `train` (same seed; a fixed number of steps, or --time-limit for a wall budget), `generate`
--n images, `evaluate --quick`. The table reads recall / coverage / density (k=5 PRDC in the real classifier's
feature space), TSTR/TRTR with its CI, and FID against the real-vs-real baseline from each metrics.json.
Results are kept per variant under --work, so a rerun only measures what is missing. Since issue 11 the cgan
default is 'bn-batch+mbstd' (sample with batch BatchNorm statistics, minibatch-stddev in D).

    flock /tmp/medsyn-bench.lock taskset -c 0 env OMP_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_collapse.py --work out/bench-collapse [--variants a,b] [--steps 1800]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NPZ = Path("/work/shared/data/pneumoniamnist/pneumoniamnist.npz")
MEDSYN = str(Path(sys.executable).parent / "medsyn")
#: The cgan as it was before issue 11, every setting spelled out so later default changes do not move it.
OLD = {
    "model": "cgan", "size": 28, "width": 32, "batch": 64, "seed": 0, "device": "cpu", "precision": "fp32",
    "loss": "hinge", "lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999], "r1_gamma": 0.0, "ema_decay": 0.999,
    "augment": "none", "model_extra": {"d_norm": "batch", "sample_bn": "running", "mbstd": 0},
    "sample_every": 600, "ckpt_every": 600, "log_every": 50,
}  # fmt: skip
#: variant name -> changes against OLD (model_extra merged key by key).
VARIANTS: dict[str, dict[str, Any]] = {
    "old-default": {},
    "sample-bn-batch": {"model_extra": {"sample_bn": "batch"}},  # sampling only: old-default's weights
    "d-spectral": {"model_extra": {"d_norm": "spectral"}},
    "mbstd": {"model_extra": {"mbstd": 4}},
    "diffaugment": {"augment": "diffaugment"},
    "r1-nonorm": {"r1_gamma": 0.1, "model_extra": {"d_norm": "none"}},
    "ttur": {"lr_g": 1e-4, "lr_d": 4e-4},
    "ns-loss": {"loss": "ns"},
    "ema-off": {"ema_decay": 0.0},
    # combinations of the single fixes that helped
    "bn-batch+spectral+mbstd": {"model_extra": {"sample_bn": "batch", "d_norm": "spectral", "mbstd": 4}},
    "bn-batch+mbstd": {"model_extra": {"sample_bn": "batch", "mbstd": 4}},
    "bn-batch+diffaugment": {"augment": "diffaugment", "model_extra": {"sample_bn": "batch"}},
}


#: model_extra keys that change only how a trained generator samples, not training: a variant that differs from
#: another only in these reuses that variant's trained run (same seed, bit-identical weights) instead of retraining.
SAMPLING_ONLY = ("sample_bn",)


def config(name: str, cache: Path, steps: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    change = overrides if overrides is not None else VARIANTS[name]
    cfg = {**OLD, **{k: v for k, v in change.items() if k != "model_extra"}, "data": str(cache), "steps": steps}
    cfg["model_extra"] = {**OLD["model_extra"], **change.get("model_extra", {})}
    return cfg


def _run(argv: list[str], log: Path) -> dict[str, Any]:
    """Run one command; its output goes to `log`; returns wall seconds and the 1-min load before/after."""
    before, start = os.getloadavg()[0], time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        code = subprocess.run(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"command failed ({code}), see {log}: {' '.join(argv)}")
    return {"wall_s": round(time.perf_counter() - start, 1), "load_before": before, "load_after": os.getloadavg()[0]}


def measure(name: str, cfg: dict[str, Any], work: Path, n: int, time_limit: str | None) -> dict[str, Any]:
    """Train, generate, evaluate one variant (skipped when its result.json exists); returns the result."""
    folder = work / name
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = folder / "log.txt"
    for sub in ("run", "synthetic", "evaluation"):
        subprocess.run(["rm", "-rf", str(folder / sub)], check=True)
    twin = _trained_twin(cfg, work, name)
    if twin is not None:  # same training: copy the run, then set the sampling option in its stored config
        subprocess.run(["cp", "-r", str(twin / "run"), str(folder / "run")], check=True)
        _set_sampling(folder / "run", cfg["model_extra"])
        timing = {"train": {"reused": twin.name}}
    else:
        train = [MEDSYN, "train", "--config", str(folder / "config.yaml"), "--out", str(folder / "run"), "--quiet"]
        timing = {"train": _run(train + (["--time-limit", time_limit] if time_limit else []), log)}
    timing["generate"] = _run([MEDSYN, "generate", str(folder / "run"), "--n", str(n), "--seed", "0", "--device",
                               "cpu", "--out", str(folder / "synthetic"), "--quiet"], log)  # fmt: skip
    timing["evaluate"] = _run([MEDSYN, "evaluate", "--real", str(work / "cache"), "--synthetic",
                               str(folder / "synthetic"), "--out", str(folder / "evaluation"), "--quick", "--seed",
                               "0", "--device", "cpu", "--quiet"], log)  # fmt: skip
    m = json.loads((folder / "evaluation" / "metrics.json").read_text())
    run = json.loads((folder / "run" / "run.json").read_text())
    prdc, fid, ratio = m["fidelity"]["prdc"], m["fidelity"]["fid"], m["utility"]["ratio"]["tstr_over_trtr"]
    result = {
        "variant": name,
        "changes": VARIANTS.get(name, {}),
        "steps": run["progress"]["steps"],  # a reused run: the steps of the run it copies "train_seconds": run["progress"]["train_seconds"],
        "precision": prdc["precision"], "recall": prdc["recall"], "density": prdc["density"],
        "coverage": prdc["coverage"],
        "tstr_trtr": [ratio["value"], ratio["ci_low"], ratio["ci_high"]],
        "trtr": m["utility"]["trtr"]["mean_auroc"], "tstr": m["utility"]["tstr"]["mean_auroc"],
        "fid": fid["baseline"]["synthetic_vs_real"], "fid_real": fid["baseline"]["real_vs_real"],
        "timing": timing,
    }  # fmt: skip
    result_file.write_text(json.dumps(result, indent=1))
    return result


def _training_part(cfg: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in cfg["model_extra"].items() if k not in SAMPLING_ONLY}
    return {**cfg, "model_extra": extra}


def _trained_twin(cfg: dict[str, Any], work: Path, name: str) -> Path | None:
    """A finished variant folder whose training config equals `cfg` up to sampling-only options."""
    for other in sorted(work.glob("*/result.json")):
        folder = other.parent
        theirs = yaml.safe_load((folder / "config.yaml").read_text())
        if folder.name != name and _training_part(theirs) == _training_part(cfg):
            return folder
    return None


def _set_sampling(run: Path, extra: dict[str, Any]) -> None:
    """Write the sampling-only options into a copied run's checkpoint and run.json (what generate reads)."""
    import torch

    sampling = {k: v for k, v in extra.items() if k in SAMPLING_ONLY}
    ck_file = run / "checkpoints" / "last.pt"
    ck = torch.load(ck_file, map_location="cpu", weights_only=True)
    ck["model"]["extra"].update(sampling)
    ck["config"]["model_extra"].update(sampling)
    torch.save(ck, ck_file)
    (run / "checkpoints" / "previous.pt").unlink(missing_ok=True)
    meta = json.loads((run / "run.json").read_text())
    meta["config"]["model_extra"].update(sampling)
    (run / "run.json").write_text(json.dumps(meta, indent=1))


def table(results: list[dict[str, Any]]) -> str:
    head = "| variant | steps | precision | recall | coverage | density | TSTR/TRTR [95% CI] | FID (real-vs-real) |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r["steps"]
        v, lo, hi = r["tstr_trtr"]
        rows.append(f"| {r['variant']} | {steps} | {r['precision']:.3f} | {r['recall']:.3f} | {r['coverage']:.3f} | "
                    f"{r['density']:.3f} | {v:.3f} [{lo:.3f}, {hi:.3f}] | {r['fid']:.2f} ({r['fid_real']:.2f}) |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "out" / "bench-collapse")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=1800, help="training steps per variant (same for all)")
    p.add_argument("--time-limit", default=None, help="instead: a wall budget per variant, e.g. 180s")
    p.add_argument("--n", type=int, default=1000, help="synthetic images per variant")
    p.add_argument("--extra", default=None, help='an ad-hoc variant: NAME=JSON changes against the old default')
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "cache" / "meta.json").is_file():
        _run([MEDSYN, "data", "prepare", f"medmnist:{NPZ}", "--size", "28", "--out", str(a.work / "cache"),
              "--seed", "0", "--quiet"], a.work / "prepare.log")  # fmt: skip
    todo = [(v, None) for v in a.variants.split(",") if v]
    if a.extra:
        name, _, changes = a.extra.partition("=")
        VARIANTS[name] = json.loads(changes)
        todo.append((name, VARIANTS[name]))
    unknown = [v for v, _ in todo if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    steps = 10**9 if a.time_limit else a.steps
    results = []
    for name, over in todo:
        results.append(measure(name, config(name, a.work / "cache", steps, over), a.work, a.n, a.time_limit))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    (a.work / "table.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
