#!/usr/bin/env python3
"""BENCHMARKS.md, written from measured results only: never edit that file by hand, rerun this script.

Two phases. `run` measures: for each real data set in ../shared/data it runs the real CLI (prepare ->
train -> generate -> evaluate --quick) as subprocesses, so every command line in the output is the one
that ran, and records its wall time, CPU time, exit code and the machine's load; then it counts the
training FLOPs of the full-size GPU recipes. Every step writes its own JSON atomically under --work, and a
rerun skips the finished ones (a killed step is started again from scratch, so its timing stays honest).
`write` renders the markdown from those JSON files alone.

    .venv/bin/python benchmarks/make_benchmarks_md.py                 # run, then write BENCHMARKS.md
    .venv/bin/python benchmarks/make_benchmarks_md.py --smoke         # tiny settings, ~3 min, out/benchmarks-smoke/
    .venv/bin/python benchmarks/make_benchmarks_md.py write           # re-render from the stored results
    .venv/bin/python benchmarks/make_benchmarks_md.py run --datasets compare   # only GAN vs diffusion (~1 h)
    .venv/bin/python benchmarks/make_benchmarks_md.py section         # splice only that section into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsyn.io import atomic_path, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYN_SHARED_DATA", REPO.parent / "shared" / "data"))
BENCH = Path(os.environ.get("MEDSYN_SHARED_BENCH", REPO.parent / "shared" / "bench"))  # textbook references
#: metrics.json's membership-inference keys -> (attack, space), for the rows of attacks that were not run
MIA_ROWS = {"pixel": ("distance", "pixels"), "feature": ("distance", "features"),
            "density pixel": ("density ratio", "pixels"), "density feature": ("density ratio", "features"),
            "model": ("model-based", "the run's own model")}  # fmt: skip
RAREST = 3  # classes shown in the augmentation-gain table, fewest training positives first
LOAD_SAMPLE_S = 2.0

# --- GPU recipe assumptions (no GPU was measured: these turn counted FLOPs into hours) ---------------------
PEAK_TFLOPS = {"A100": 312.0, "H100 SXM": 989.0}  # dense bf16 tensor-core peak, vendor data sheets
MFU = (0.30, 0.10)  # assumed sustained fraction of peak: optimistic, pessimistic (small convnets, batch 64)
GPU_IMAGES_SEEN = 10_000_000  # images shown to D per full-size run (StyleGAN2-ADA-style 10k kimg)
GPU_BATCH = 64  # per process
GPU_PROCS = 8
GPU_MODELS = (("cgan", 128), ("stylegan2", 128), ("stylegan2", 256))
FULL_SETS = {  # name: (images, spec as a user would write it, folder tag)
    "NIH ChestX-ray14": (112_120, "nih:/data/cxr14", "nih"),
    "CheXpert": (224_316, "chexpert:/data/CheXpert-v1.0?uncertain=zeros&view=frontal", "chexpert"),
}


# ----------------------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    """One data set, end to end at CPU scale; `prepare`/`generate` are the extra CLI options of those steps."""

    key: str
    title: str
    spec: str
    size: int
    steps: int
    model: str = "cgan"
    width: int = 32
    batch: int = 64
    prepare: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    generate: tuple[str, ...] = ()  # none: the training size and label distribution (what TSTR compares)
    why: str = ""
    reference: tuple[str, ...] = ()  # a textbook script in BENCH and its options, run at medsyn's training time


def experiments(data: Path, smoke: bool) -> list[Experiment]:
    """The benchmark configurations: ~25-30 min on an idle 2-core CPU (training is ~80% of it), ~3 min with
    `smoke` (20 steps, 1 classifier epoch, 256 synthetic images, PneumoniaMNIST capped at 300 per class)."""
    pneu = f"medmnist:{_display(data / 'pneumoniamnist' / 'pneumoniamnist.npz')}"
    nih = f"nih:{_display(data / 'nih-cxr14-sample')}"
    covid = f"ieee8023:{_display(data / 'covid-chestxray')}"
    nih_classes = "Effusion,Infiltration" if smoke else "Effusion,Infiltration,Atelectasis,Cardiomegaly"
    tiny = ("--n", "256") if smoke else ()
    small_data = ("--augment", "diffaugment")
    return [
        Experiment("pneumoniamnist", "PneumoniaMNIST", pneu, 28, 20 if smoke else 5000,
                   prepare=("--cap", "300") if smoke else (), generate=tiny,
                   why="official MedMNIST split; no patient ids, so re-identification is not assessable",
                   reference=("textbook_cgan_tstr.py", "--npz", pneu.split(":", 1)[1],
                              *(("--clf-seeds", "1", "--clf-epochs", "1") if smoke else ()))),
        Experiment("nih", "NIH ChestX-ray14 sample", nih, 64, 20 if smoke else 2500, prepare=("--classes", nih_classes),
                   train=small_data, generate=tiny,
                   why="the most frequent findings only, so that the test patients hold positives; 437 training "
                       "images, so the discriminator sees DiffAugment (Zhao et al. 2020), as for any small set"),
        Experiment("covid", "ieee8023 covid-chestxray", covid, 64, 20 if smoke else 1000, train=small_data,
                   generate=tiny, why="all findings; only those with enough test positives are scored; DiffAugment "
                                      "(a few hundred training images)"),
    ]  # fmt: skip


def _display(path: Path) -> str:
    """A path as written in a command: relative to the repository root (where commands run) when it lies
    in the repository or beside it (../shared/data), else absolute."""
    full = Path(path).absolute()
    return os.path.relpath(full, REPO) if full.is_relative_to(REPO.parent) else str(full)


def medsyn_exe() -> list[str]:
    """The installed `medsyn` script next to this interpreter, else `python -m medsyn`."""
    script = Path(sys.executable).parent / "medsyn"
    return [_display(script)] if script.is_file() else [_display(Path(sys.executable)), "-m", "medsyn"]


OUTPUT = {"prepare": "cache", "train": "run", "generate": "synthetic", "evaluate": "evaluation"}  # step: folder


def commands(exp: Experiment, folder: Path, settings_file: Path) -> dict[str, list[str]]:
    """The four CLI steps of one experiment, in order; paths relative to the repository root."""
    exe, d = medsyn_exe(), {k: _display(folder / k) for k in OUTPUT.values()}
    settings = ["--settings", _display(settings_file)]
    return {
        "prepare": [*exe, "data", "prepare", exp.spec, "--size", str(exp.size), "--out", d["cache"], "--seed", "0",
                    *exp.prepare, "--quiet"],
        "train": [*exe, "train", d["cache"], "--model", exp.model, "--size", str(exp.size), "--steps", str(exp.steps),
                  "--width", str(exp.width), "--batch", str(exp.batch), *exp.train, "--seed", "0", "--device", "cpu",
                  "--out", d["run"], "--quiet"],
        "generate": [*exe, "generate", d["run"], *exp.generate, "--seed", "0", "--device", "cpu",
                     "--out", d["synthetic"], "--quiet"],
        "evaluate": [*exe, "evaluate", "--real", d["cache"], "--synthetic", d["synthetic"], "--out", d["evaluation"],
                     "--quick", "--seed", "0", "--device", "cpu", *settings, "--quiet"],
    }  # fmt: skip


BENCH_SETTINGS = {"classifier": {"epochs": 30, "patience": 8}, "utility": {"seeds": [0, 1, 2]},
                  "reid": {"epochs": 15, "steps_per_epoch": 50, "patience": 4}}  # fmt: skip
"""`--quick` (the small CNN) trained as the textbook references train theirs (tens of epochs, patience, three
seeds) rather than quick's 4 epochs x 1 seed, which leaves the small NIH set's real classifier at chance."""
SMOKE_SETTINGS = {"classifier": {"epochs": 1}, "utility": {"n_bootstrap": 20}, "kid_subsets": 10,
                  "reid": {"epochs": 1, "steps_per_epoch": 5}}  # fmt: skip


# ----------------------------------------------------------------------------------------- measuring


def run_command(argv: Sequence[str], log: Path) -> dict[str, Any]:
    """Run one command from the repository root; its output goes to `log`. Records wall and CPU time,
    exit code, and the 1-minute load average before, after and at its highest (the machine is shared)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before, cpu0 = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    start, t0, peak = dt.datetime.now(dt.UTC), time.perf_counter(), before
    with open(log, "w") as fh:
        proc = subprocess.Popen(list(argv), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            try:
                proc.wait(timeout=LOAD_SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                peak = max(peak, os.getloadavg()[0])
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "command": shlex.join(argv), "exit_code": proc.returncode, "wall_s": round(wall, 2),
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "start": start.isoformat(timespec="seconds"), "end": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_1min": {"before": before, "after": os.getloadavg()[0], "max": peak}, "log": _display(log), "git": git_state(),
        "tail": "" if proc.returncode == 0 else log.read_text(errors="replace")[-1500:],
    }  # fmt: skip


def recorded(label: str, argv: Sequence[str], record: Path, log: Path, rerun: bool = False,
             before: Callable[[], None] | None = None,
             finish: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """One command run at most once: kept when `record` says it already exited 0 with the same command line
    (unless `rerun`); else `before` (e.g. clear a stale output), run, completed by `finish` (e.g. the output
    it parsed) and recorded. Returns the record and whether it ran now."""
    done = _read_json(record)
    if not rerun and done and done.get("exit_code") == 0 and done.get("command") == shlex.join(argv):
        return done, False
    if before is not None:
        before()
    print(f"[{label}] {shlex.join(argv)}", flush=True)
    result = run_command(argv, log)
    if finish is not None:
        finish(result)
    write_json_atomic(record, result)
    print(f"[{label}] exit {result['exit_code']} in {result['wall_s']:.0f} s", flush=True)
    return result, True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _train_stats(run: Path) -> dict[str, Any]:
    """Logged training rates (median of the img/s column of losses.csv) and what was trained."""
    rates, last = [], {}
    try:
        with open(run / "losses.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                last = row
                if row.get("img_per_s"):
                    rates.append(float(row["img_per_s"]))
    except OSError:
        pass
    meta = _read_json(run / "run.json") or {}
    return {"median_img_per_s": _median(rates), "n_rates": len(rates), "steps": _num(last.get("step")),
            "images_seen": _num(last.get("images")), "config": meta.get("config", {}),
            "runtime": meta.get("runtime", {}), "groups": meta.get("groups", [])}  # fmt: skip


def _median(values: Sequence[float]) -> float | None:
    s = sorted(values)
    return None if not s else (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2


def _num(v: Any) -> int | float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else f


def run_experiment(exp: Experiment, work: Path, smoke: bool) -> dict[str, Any]:
    """Run the steps not yet finished (a step is finished when its record says exit code 0), then write
    RESULT.json with the step records, the metrics and the run's statistics."""
    folder = work / exp.key
    result_path = folder / "result.json"
    settings = folder / "settings.json"  # YAML is a superset of JSON
    todo = commands(exp, folder, settings)
    done = _read_json(result_path)
    wanted = {name: shlex.join(argv) for name, argv in todo.items()}
    if done and done.get("status") == "ok" and {k: s.get("command") for k, s in done["steps"].items()} == wanted:
        print(f"[{exp.key}] finished earlier; kept ({_display(result_path)})")
        return done
    write_json_atomic(settings, SMOKE_SETTINGS if smoke else BENCH_SETTINGS)
    steps: dict[str, Any] = {}
    stale = False  # once a step runs again, every later step must too
    for name, argv in todo.items():
        record, ran = recorded(f"{exp.key} {name}", argv, folder / "steps" / f"{name}.json",
                               folder / "logs" / f"{name}.log", rerun=stale,
                               before=lambda n=name: shutil.rmtree(folder / OUTPUT[n], ignore_errors=True))  # fmt: skip
        stale = stale or ran
        steps[name] = record
        if record["exit_code"] != 0:
            break
    ok = all(s["exit_code"] == 0 for s in steps.values()) and len(steps) == 4
    reference = run_reference(exp, folder, steps["train"]["wall_s"]) if ok and exp.reference else None
    result = {
        "status": "ok" if ok else "failed", "experiment": asdict(exp), "smoke": smoke, "steps": steps,
        "settings": SMOKE_SETTINGS if smoke else BENCH_SETTINGS,
        "train": _train_stats(folder / "run"),
        "synthetic": _read_json(folder / "synthetic" / "manifest.json") or {},
        "metrics": _read_json(folder / "evaluation" / "metrics.json") or {},
        "reference": reference,
    }  # fmt: skip
    write_json_atomic(result_path, result)
    return result


def run_reference(exp: Experiment, folder: Path, train_wall_s: float) -> dict[str, Any]:
    """The textbook script of `exp.reference`, given as GAN training budget the wall time of medsyn's whole
    `train` command (start-up, sample grids and checkpoints included, so the textbook gets slightly more
    training time than medsyn did). Its record holds the JSON line the script prints last."""
    script, *options = exp.reference
    path = BENCH / script
    if not path.is_file():
        return {"skipped": f"{_display(path)} not found (set MEDSYN_SHARED_BENCH)"}
    argv = [_display(Path(sys.executable)), _display(path), *options, "--budget-min", f"{train_wall_s / 60:.3f}",
            "--out", _display(folder / "reference"), "--seed", "0"]  # fmt: skip
    log = folder / "logs" / "reference.log"

    def parse(record: dict[str, Any]) -> None:  # the script's last line is its JSON summary
        lines = log.read_text(errors="replace").strip().splitlines()
        try:
            record["summary"] = json.loads(lines[-1]) if record["exit_code"] == 0 else None
        except (IndexError, ValueError):
            record["summary"], record["exit_code"] = None, record["exit_code"] or -1

    return recorded(f"{exp.key} reference", argv, folder / "steps" / "reference.json", log, finish=parse)[0]


def count_gpu_flops(work: Path, smoke: bool) -> dict[str, Any]:
    """Matmul/conv FLOPs per training image of each GPU-recipe model (one D step + one G step, counted on
    the CPU with torch.utils.flop_counter), and of the full evaluation's classifier (forward + backward)."""
    path = work / "gpu_flops.json"
    done = _read_json(path)
    if done and done.get("smoke") == smoke:
        return done
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medsyn.evaluate.pipeline import EvalSettings
    from medsyn.models.classifiers import build_classifier
    from medsyn.models.config import GANConfig
    from medsyn.models.registry import build_gan

    t0, k, batch = time.perf_counter(), 14, 2
    models = GPU_MODELS[:1] if smoke else GPU_MODELS
    torch.manual_seed(0)

    def counted(fn: Callable[[], None]) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / batch

    gans = []
    for name, size in models:
        g, d = build_gan(GANConfig(name, size, 1, k, 100, 64))
        z, y, x = torch.randn(batch, 100), torch.zeros(batch, k), torch.randn(batch, 1, size, size)

        def step(g: Any = g, d: Any = d, z: Any = z, y: Any = y, x: Any = x) -> None:
            (d(x, y)[0].mean() - d(g(z, y).detach(), y)[0].mean()).backward()  # D step
            (-d(g(z, y), y)[0].mean()).backward()  # G step

        gans.append({"model": name, "size": size, "width": 64, "classes": k, "flops_per_image": counted(step),
                     "params_g": sum(p.numel() for p in g.parameters()),
                     "params_d": sum(p.numel() for p in d.parameters())})  # fmt: skip
    full = EvalSettings.make(False, 0, "cpu", False)
    clf_name = full.utility.classifier.model
    classifiers = []
    for size in sorted({s for _, s in models}):
        net = build_classifier(clf_name, 1, k, size)
        classifiers.append({"model": clf_name, "size": size,
                            "flops_per_image": counted(lambda n=net, s=size: n(torch.randn(batch, 1, s, s)).sum().backward())})  # fmt: skip
    out = {"smoke": smoke, "gans": gans, "classifiers": classifiers, "torch": torch.__version__,
           "eval_epochs": full.utility.classifier.epochs, "eval_seeds": len(full.utility.seeds),
           "counted_in_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    write_json_atomic(path, out)
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(changed), "dirty_files": changed}


def machine_info() -> dict[str, Any]:
    """CPU, memory, library versions, niceness and git state of the machine that measures."""
    import monai
    import numpy
    import torch

    def proc_field(file: str, key: str) -> str | None:
        try:
            for line in Path(file).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    mem = proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None, "nice": os.nice(0),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "monai": monai.__version__, "os": platform.platform(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **git_state(),
    }  # fmt: skip


def run_phase(args: argparse.Namespace, work: Path) -> None:
    selected = [e for e in experiments(args.data, args.smoke) if e.key in args.datasets]
    meta = _read_json(work / "machine.json") or {}
    write_json_atomic(work / "machine.json", {**machine_info(), "smoke": args.smoke,
                                              "run_commands": list(dict.fromkeys([*meta.get("run_commands", []), _own_command()]))})  # fmt: skip
    for exp in selected:
        run_experiment(exp, work, args.smoke)
    if "sweep" in args.datasets:
        run_sweep_step(args.data, work, args.smoke)
    if "compare" in args.datasets:
        run_compare_step(args.data, work, args.smoke, args.compare_skip, args.compare_jobs, args.compare_models)
    count_gpu_flops(work, args.smoke)


def _own_command() -> str:
    """This script's command line (with its niceness, which the measured commands inherit)."""
    nice = os.nice(0)
    return f"nice -n {nice} " * (nice > 0) + shlex.join(
        [_display(Path(sys.executable)), _display(Path(__file__)), *sys.argv[1:]]
    )


# ----------------------------------------------------------------------------------------- rendering


def dig(d: Any, *keys: Any) -> Any:
    """d[k1][k2]... or None when any level is missing (metrics files gain and lose keys between versions)."""
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def fmt(v: Any, decimals: int = 3, pct: bool = False) -> str:
    """A number for a table ('n/a' when missing or non-finite): integers whole, large floats rounded,
    tiny ones in scientific notation, fractions as percentages with `pct`."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "n/a" if v is None else str(v)
    if not math.isfinite(v):
        return "n/a"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.{decimals}f}"


def ci(d: Any, key: str = "value", lo: str = "ci_low", hi: str = "ci_high", pct: bool = False) -> str:
    """'value [low, high]' from one result dict; the skip reason when the dict says it was skipped."""
    if isinstance(d, Mapping) and "skipped" in d:
        return f"n/a ({d['skipped']})"
    v = dig(d, key)
    if v is None:
        return "n/a"
    low, high = dig(d, lo), dig(d, hi)
    return fmt(v, pct=pct) + (f" [{fmt(low, pct=pct)}, {fmt(high, pct=pct)}]" if low is not None else "")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc])


def utility_section(m: Mapping[str, Any]) -> str:
    u = m.get("utility") or {}
    if "trtr" not in u:
        return f"Not assessed: {u.get('skipped', 'no utility results')}."
    mean = {"key": "mean_auroc", "lo": "mean_ci_low", "hi": "mean_ci_high"}
    rows = [[name, ci(u.get(key), **mean)] for key, name in
            (("trtr", "TRTR: train real, test real"), ("tstr", "TSTR: train synthetic, test real"),
             ("augmented", "train real + synthetic, test real"))]  # fmt: skip
    rows += [["ratio TSTR / TRTR", ci(dig(u, "ratio", "tstr_over_trtr"))],
             ["above-chance ratio (TSTR − 0.5) / (TRTR − 0.5)", ci(dig(u, "ratio", "tstr_over_trtr_above_chance"))],
             ["mean augmentation gain", ci(u.get("augmentation_gain"), "mean", "mean_ci_low", "mean_ci_high")]]  # fmt: skip
    positives = dig(m, "data", "real", "splits", "train", "positives") or {}
    test_pos = dig(m, "data", "real", "splits", "test", "positives") or {}
    classes = sorted(u.get("classes") or positives, key=lambda c: (positives.get(c, math.inf), c))[:RAREST]
    per_class = [[c, positives.get(c, "n/a"), test_pos.get(c, "n/a"),
                  *(ci(dig(u, s, "classes", c), "auroc") for s in ("trtr", "tstr", "augmented")),
                  ci(dig(u, "augmentation_gain", "per_class", c), "gain")] for c in classes]  # fmt: skip
    unscored = [f"{c}: {r}" for c, e in (dig(u, "trtr", "classes") or {}).items() if (r := dig(e, "reason"))]
    clf = u.get("classifier") or {}
    return "\n\n".join([
        f"Mean AUROC over {len(u.get('classes') or [])} classes on {fmt(u.get('n_images'))} real test images of "
        f"{fmt(u.get('n_patients'))} patients; classifier `{clf.get('model', 'n/a')}`, {clf.get('epochs', 'n/a')} "
        f"epochs, {u.get('n_seeds', 'n/a')} seed(s); {u.get('ci_method', 'bootstrap')} over {u.get('resample_unit', 'n/a')}s, "
        f"{u.get('n_bootstrap', 'n/a')} resamples, 95% CI in brackets.",
        table(["", "value [95% CI]"], rows),
        f"Rarest {len(classes)} classes (fewest training positives): AUROC per training set and the gain from "
        "adding the synthetic images to the real ones.",
        table(["class", "train positives", "test positives", "TRTR", "TSTR", "real + synthetic", "gain"], per_class),
        *(["Not scored: " + "; ".join(unscored)] if unscored else []),
    ])  # fmt: skip


def fidelity_section(m: Mapping[str, Any]) -> str:
    f = m.get("fidelity") or {}
    back = f.get("backbone") or {}
    head = (f"Feature extractor: `{back.get('name', 'n/a')}` — {back.get('implementation', 'n/a')}; "
            f"reference: {f.get('reference', 'n/a')}.")  # fmt: skip
    if "fid" not in f:
        return head + f"\n\nNot assessed: {f.get('skipped', 'no fidelity results')}."
    fid, base, kid, prdc = f["fid"], dig(f, "fid", "baseline") or {}, f.get("kid") or {}, f.get("prdc") or {}
    rows = [
        ["FID (all images)", fmt(fid.get("fid")), f"N real {fmt(fid.get('n_real'))}, N synthetic {fmt(fid.get('n_synthetic'))}"],
        ["FID synthetic vs real at the baseline's N", f"{fmt(base.get('synthetic_vs_real'))} ± {fmt(base.get('synthetic_vs_real_std'))}",
         f"N = {fmt(base.get('n'))}, {fmt(base.get('repeats'))} repeats"],
        ["FID real vs real (baseline)", f"{fmt(base.get('real_vs_real'))} ± {fmt(base.get('real_vs_real_std'))}",
         "two disjoint real subsets of the same N"],
        ["KID", f"{fmt(kid.get('kid'))} ± {fmt(kid.get('kid_std'))}",
         f"{fmt(kid.get('n_subsets'))} subsets of {fmt(kid.get('subset_size'))}"],
        *([name, fmt(prdc.get(name)), f"k = {fmt(prdc.get('k'))}"] for name in ("precision", "recall", "density", "coverage")),
    ]  # fmt: skip
    return head + "\n\n" + table(["metric", "value", "setting"], rows)


def privacy_section(m: Mapping[str, Any]) -> str:
    p = m.get("privacy") or {}
    if not p:
        return "Not assessed."
    from medsyn.evaluate.verdicts import REID_FPR

    rows = []
    for space, d in (p.get("dcr") or {}).items():
        if "skipped" in d:
            rows.append([f"DCR ({space})", ci(d), ""])
            continue
        rows += [[f"DCR ({d.get('space', space)}): synthetic closer to train than held-out p{q}",
                  fmt(d.get(f"fraction_below_p{q}"), pct=True), f"expected {q}%; identical copies {fmt(d.get('n_identical'))}"]
                 for q in (1, 5)]  # fmt: skip
        train = dig(m, "data", "real", "splits", "train") or {}
        if (near := d.get("nearest_patient")) and train.get("patients") != train.get("images"):  # else no patients
            rows.append([f"DCR ({d.get('space', space)}): synthetic images nearest to one training patient",
                         fmt(near.get("synthetic"), pct=True),
                         f"held-out images: {fmt(near.get('holdout'), pct=True)}; that patient's share of training "
                         f"images: {fmt(near.get('training'), pct=True)}"])  # fmt: skip
    for key, d in (p.get("membership_inference") or {}).items():
        attack, where = MIA_ROWS.get(key, (key, key))
        rows.append([f"membership inference AUROC, {d.get('attack') or attack} ({d.get('space') or where})",
                     ci(d, "auroc"), "0.5 = no leakage"])  # fmt: skip
    reid = p.get("reidentification") or {}
    match = dig(reid, "matching", "gallery_calibrated", str(REID_FPR)) or {}
    rows += [["re-identification: verification AUROC (held-out patients)", ci(reid.get("verification") or reid, "auroc"),
              "how well the attack recognises a patient"],
             [f"re-identification: synthetic images linked to a training patient (FPR {REID_FPR})",
              ci(match.get("synthetic") or reid, "fraction", pct=True),
              f"held-out real images: {fmt(match.get('heldout_fraction'), pct=True)}"]]  # fmt: skip
    return table(["check", "value [95% CI]", "reading"], rows)


def _rate(images: Any, seconds: Any) -> str:
    return fmt(images / seconds, 1) if isinstance(images, (int, float)) and seconds else "n/a"


def throughput_section(r: Mapping[str, Any]) -> str:
    steps, train, syn = r.get("steps") or {}, r.get("train") or {}, r.get("synthetic") or {}
    cfg, prep_meta = (
        {**(train.get("config") or {}), **(train.get("runtime") or {})},
        dig(r, "metrics", "data", "real", "splits") or {},
    )
    n_real = sum(v.get("images", 0) for v in prep_meta.values()) or None
    rows = [
        ["prepare (decode + resize into the cache)", _rate(n_real, dig(steps, "prepare", "wall_s")), f"{fmt(n_real)} images, whole command"],
        ["training, median of logged rates", fmt(train.get("median_img_per_s"), 1),
         f"{fmt(train.get('n_rates'))} log rows; model {cfg.get('model', 'n/a')}, width {cfg.get('width', 'n/a')}, "
         f"batch {cfg.get('batch', 'n/a')}, precision {cfg.get('precision', 'n/a')}"],
        ["training, whole command", _rate(train.get("images_seen"), dig(steps, "train", "wall_s")),
         f"{fmt(train.get('images_seen'))} images in {fmt(train.get('steps'))} steps; includes start-up, samples, checkpoints"],
        ["generation, whole command", _rate(syn.get("images"), dig(steps, "generate", "wall_s")),
         f"{fmt(syn.get('images'))} PNGs written ({syn.get('mode', 'n/a')}); includes start-up"],
    ]  # fmt: skip
    return table(["stage", "img/s", "what"], rows)


def reference_section(r: Mapping[str, Any]) -> str:
    """medsyn beside the textbook script of ../shared/bench at the same training wall time, each judged by
    its own classifier on the same official real test split."""
    ref = r.get("reference") or {}
    if "skipped" in ref:
        return f"Not run: {ref['skipped']}."
    t = ref.get("summary")
    if ref.get("exit_code") != 0 or not t:
        return f"The reference failed (exit {ref.get('exit_code')}): `{ref.get('command')}`\n\n```\n{ref.get('tail', '')}\n```"
    u, train = dig(r, "metrics", "utility") or {}, r.get("train") or {}

    def mean_sd(v: Any) -> str:
        return f"{fmt(v[0])} ± {fmt(v[1])}" if isinstance(v, list) and len(v) == 2 else "n/a"

    def ratio(a: Any, b: Any) -> str:
        return fmt(a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"

    trtr, tstr = dig(u, "trtr", "mean_auroc"), dig(u, "tstr", "mean_auroc")
    ours_ratio = dig(u, "ratio", "tstr_over_trtr", "value")

    def first(v: Any) -> Any:
        return v[0] if isinstance(v, list) and v else None

    rows = [
        ["GAN training wall time, s (medsyn: the whole `train` command)", fmt(dig(r, "steps", "train", "wall_s"), 1),
         fmt(t.get("gan_seconds"), 1), ratio(dig(r, "steps", "train", "wall_s"), t.get("gan_seconds"))],
        ["images shown to D", fmt(train.get("images_seen")), fmt((t.get("gan_steps") or 0) * (t.get("gan_batch") or 0)),
         ratio(train.get("images_seen"), (t.get("gan_steps") or 0) * (t.get("gan_batch") or 0))],
        ["training img/s (medsyn: median logged rate)", fmt(train.get("median_img_per_s"), 1), fmt(t.get("gan_img_per_s"), 1),
         ratio(train.get("median_img_per_s"), t.get("gan_img_per_s"))],
        ["TRTR mean AUROC", ci(u.get("trtr"), "mean_auroc", "mean_ci_low", "mean_ci_high"), mean_sd(t.get("trtr_auroc")),
         ratio(trtr, first(t.get("trtr_auroc")))],
        ["TSTR mean AUROC", ci(u.get("tstr"), "mean_auroc", "mean_ci_low", "mean_ci_high"), mean_sd(t.get("tstr_auroc")),
         ratio(tstr, first(t.get("tstr_auroc")))],
        ["TSTR / TRTR", ci(dig(u, "ratio", "tstr_over_trtr")), fmt(t.get("tstr_over_trtr")),
         ratio(ours_ratio, t.get("tstr_over_trtr"))],
    ]  # fmt: skip
    clf = u.get("classifier") or {}
    return "\n\n".join([
        f"`{ref.get('command')}` ({fmt(ref.get('wall_s'), 0)} s in all), in the same run, given medsyn's training "
        "wall time as its budget. Each side is judged by its own classifier on the same official real test split: "
        f"medsyn `{clf.get('model', 'n/a')}`, {u.get('n_seeds', 'n/a')} seed(s), 95% CI over test patients in brackets; "
        f"the textbook's small CNN, {t.get('clf_seeds', 'n/a')} seeds, mean ± std over seeds. The last column is "
        "medsyn / textbook.",
        table(["", "medsyn", "textbook", "medsyn / textbook"], rows),
        f"Textbook label fidelity (its real-trained CNN on its synthetic images): {mean_sd(t.get('label_fidelity_auroc'))}.",
    ])  # fmt: skip


def ordered(d: Mapping[str, Any], order: Iterable[str]) -> list[tuple[str, Any]]:
    """Items of `d` in `order` first, then the rest (JSON files store keys sorted)."""
    first = [k for k in order if k in d]
    return [(k, d[k]) for k in first + [k for k in d if k not in first]]


def steps_table(steps: Mapping[str, Any]) -> str:
    rows = [[name, fmt(s.get("wall_s"), 1), fmt(s.get("cpu_s"), 1), s.get("exit_code"), s.get("start", ""),
             " / ".join(fmt(dig(s, "load_1min", k), 2) for k in ("before", "max", "after"))]
            for name, s in ordered(steps, OUTPUT)]  # fmt: skip
    return table(["step", "wall s", "CPU s", "exit", "started (UTC)", "load 1-min before / max / after"], rows)


def balance_caveat(manifest: Mapping[str, Any]) -> str | None:
    """A warning for a row whose synthetic set was drawn with `--balance` and so holds no image of a class (the
    largest label group gets none): its TSTR for that class was scored from a classifier that never saw one."""
    negative = manifest.get("negative_class")
    missing = [c for c, n in (manifest.get("counts") or {}).items() if c != negative and not n]
    if manifest.get("mode") != "balance" or not missing:
        return None
    return (f"**Not valid as a TSTR measurement for {', '.join(missing)}: rerun.** This row's synthetic set was "
            "drawn with `--balance`, the augmentation recipe, which writes no image of the largest label group (and "
            "none of a group the generator never saw); the evaluation of that time still scored TSTR for those "
            "classes from a classifier that never saw one. `medsyn evaluate` now leaves such a class out, and this "
            "script draws the training size and label distribution. The privacy and fidelity figures describe that "
            "set.")


def experiment_section(r: Mapping[str, Any]) -> str:
    exp, m = r.get("experiment") or {}, r.get("metrics") or {}
    steps = dict(ordered(r.get("steps") or {}, OUTPUT))
    out = [f"## {exp.get('title', exp.get('key'))} ({exp.get('size')} px, {exp.get('model')}, {fmt(exp.get('steps'))} steps)",
           f"{str(exp.get('why', ''))[:1].upper()}{str(exp.get('why', ''))[1:]}. Measured at {_commits(steps.values())}.",
           "```bash\n" + "\n".join(s["command"] for s in steps.values()) + "\n```"]  # fmt: skip
    if r.get("settings"):
        out.append(f"Evaluation settings file (passed with `--settings`): `{json.dumps(r['settings'])}`")
    if caveat := balance_caveat(r.get("synthetic") or {}):
        out.append(caveat)
    out.append(steps_table(steps))
    failed = [(n, s) for n, s in steps.items() if s.get("exit_code") != 0]
    if failed or r.get("status") != "ok":
        name, s = failed[0] if failed else ("?", {})
        return "\n\n".join([*out, f"**Failed at `{name}`** (exit {s.get('exit_code')}); last output:",
                            "```\n" + str(s.get("tail", "")).strip() + "\n```"])  # fmt: skip
    verdicts = [
        [v.get("check", k), v.get("level", "n/a"), v.get("reason", "")]
        for k, v in ordered(m.get("verdicts") or {}, ("useful", "realistic", "private"))
    ]
    timings = [[k, fmt(v.get("wall_s"), 1), fmt(v.get("cpu_s"), 1)] for k, v in (m.get("timings") or {}).items()]
    notes = dig(m, "data", "notes") or []
    out += ["### Useful?", utility_section(m), "### Realistic?", fidelity_section(m), "### Private?", privacy_section(m),
            "### Verdicts", table(["question", "verdict", "why"], verdicts),
            *(["### Side by side with the textbook reference", reference_section(r)] if r.get("reference") else []),
            "### Throughput", throughput_section(r),
            "### Evaluation time by stage", table(["stage", "wall s", "CPU s"], timings),
            *(["Notes: " + "; ".join(map(str, notes))] if notes else [])]  # fmt: skip
    return "\n\n".join(out)


def _commits(records: Iterable[Mapping[str, Any]]) -> str:
    """The git commit(s) the steps ran at (a resumed benchmark may span several)."""
    def one(r: Mapping[str, Any]) -> str:
        files = dig(r, "git", "dirty_files")
        dirty = f" (with uncommitted changes to {', '.join(files)})" if files else " (with uncommitted changes)"
        return f"`{dig(r, 'git', 'commit') or 'n/a'}`" + dirty * bool(dig(r, "git", "dirty"))

    seen = dict.fromkeys(one(r) for r in records)
    return "commit " + ", ".join(seen) if seen else "an unknown commit"


def machine_section(info: Mapping[str, Any]) -> str:
    rows = [["CPU", f"{info.get('cpu', 'n/a')}, {info.get('cores', 'n/a')} cores visible, torch threads {info.get('torch_threads', 'n/a')}"],
            ["RAM", f"{fmt(info.get('ram_gib'), 1)} GiB"], ["OS", info.get("os", "n/a")],
            ["software", f"Python {info.get('python')}, torch {info.get('torch')}, numpy {info.get('numpy')}, MONAI {info.get('monai')}"],
            ["git", f"`{info.get('commit')}`" + " with uncommitted changes" * bool(info.get("dirty"))],
            ["measured", f"{info.get('date', 'n/a')} (UTC), niceness {info.get('nice', 'n/a')}"]]  # fmt: skip
    return "\n\n".join([
        table(["", ""], rows),
        "The machine is **shared** with other jobs: the 1-minute load average is recorded before, during (max) and "
        "after every command. CPU seconds (all threads of the command) are steadier than wall seconds. Every number is "
        "from **one run** at **CPU scale** (small generators, `--quick` evaluation with the small CNN, trained as the "
        "settings file of each data set says), nothing tuned per data set: read them as a CPU baseline, not as the "
        "quality the models reach at full size on a GPU.",
    ])  # fmt: skip


SWEEP_COLUMNS = {  # results.csv column(s) -> table heading; "a|b|c" renders as "a [b, c]"
    "point": "cap per class", "real_train_images": "real train images", "synthetic_images": "synthetic images",
    "generator_steps": "G steps", "generator_train_s": "G train s", "trtr_auroc|trtr_ci_low|trtr_ci_high": "TRTR",
    "tstr_auroc|tstr_ci_low|tstr_ci_high": "TSTR", "ratio|ratio_ci_low|ratio_ci_high": "TSTR / TRTR",
    "ratio_above_chance|ratio_above_chance_ci_low|ratio_above_chance_ci_high": "above-chance ratio",
    "augmented_auroc": "real + synthetic", "point_wall_s": "point s",
}  # fmt: skip


def sweep_commands(data: Path, folder: Path, smoke: bool) -> list[str]:
    """The samples sweep of Schütte et al. on PneumoniaMNIST: real images per class 50 .. 1000 (~10 min)."""
    pneu = f"medmnist:{_display(data / 'pneumoniamnist' / 'pneumoniamnist.npz')}"
    points, budget = ("20,60", "10") if smoke else ("50,200,1000", "2m")
    return [*medsyn_exe(), "benchmark", "--data", pneu, "--sweep", "samples", "--points", points, "--size", "28",
            "--steps", "20" if smoke else "20000", "--budget", budget, "--seed", "0", "--device", "cpu",
            "--out", _display(folder), "--quiet"]  # fmt: skip


def run_sweep_step(data: Path, work: Path, smoke: bool) -> dict[str, Any]:
    """The sweep as one recorded command; `medsyn benchmark` itself resumes a killed sweep."""
    folder = work / "sweep"
    return recorded("sweep", sweep_commands(data, folder / "out", smoke), folder / "step.json", folder / "sweep.log")[0]


COMPARE_BUDGET_MIN = 10.0  # per side: the 10 CPU-minutes (one thread each)
COMPARE_THREADS = "1"  # every side one thread: equal shares on a shared 2-core machine, no OpenMP spin-waits
COMPARE_MODELS = "ddpm:16,cgan:32"  # medsyn's sides (`--compare-models`), as `medsyn benchmark --compare` reads them


def native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX): without it oneDNN emulates bf16 and the
    textbook DDPM's bf16 default ran ~8x slower than fp32 on an earlier machine of this project, which would
    starve it; with it bf16 is the faster choice, so the textbook keeps its default."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def compare_commands(data: Path, folder: Path, smoke: bool, models: str = COMPARE_MODELS) -> dict[str, list[str]]:
    """GAN or diffusion on PneumoniaMNIST 28 px, several sides at the same training wall budget: medsyn's models
    (`medsyn benchmark --compare`, judged by `evaluate --quick` with its defaults) and the textbook cDCGAN and
    DDPM of ../shared/bench (judged by their own small CNN). The textbook DDPM runs in bf16 (its default) only on
    a CPU with native bf16, else in fp32 (see `native_bf16`)."""
    npz = _display(data / "pneumoniamnist" / "pneumoniamnist.npz")
    budget = 0.2 if smoke else COMPARE_BUDGET_MIN
    py = _display(Path(sys.executable))
    clf = ("--clf-seeds", "1", "--clf-epochs", "1") if smoke else ()
    return {
        "medsyn": [*medsyn_exe(), "benchmark", "--data", f"medmnist:{npz}", "--compare", models,
                   "--budget", f"{budget * 60:g}", "--size", "28", "--ddim-steps", "10", "--guidance", "2",
                   *(("--n", "200") if smoke else ()), "--seed", "0", "--device", "cpu",  # n: real training size
                   "--out", _display(folder / "medsyn"), "--quiet"],
        "textbook-ddpm": [py, _display(BENCH / "textbook_ddpm_tstr.py"), "--npz", npz, "--budget-min", f"{budget:g}",
                          *(() if native_bf16() else ("--fp32",)), "--threads", COMPARE_THREADS,
                          "--out", _display(folder / "textbook-ddpm"), "--seed", "0", *clf],
        "textbook-cgan": [py, _display(BENCH / "textbook_cgan_tstr.py"), "--npz", npz, "--budget-min", f"{budget:g}",
                          "--threads", COMPARE_THREADS, "--out", _display(folder / "textbook-cgan"), "--seed", "0",
                          *clf],
    }  # fmt: skip


def run_compare_step(data: Path, work: Path, smoke: bool, skip: Sequence[str] = (), jobs: int = 3,
                     models: str = COMPARE_MODELS) -> dict[str, Any]:
    """The sides as recorded commands (each skipped once it has succeeded; `medsyn benchmark --compare` itself
    resumes a killed comparison), in `jobs` processes of one thread each: medsyn (its models one after the
    other), the textbook DDPM and the textbook cDCGAN. With jobs = 3 they start together (equal shares of a
    shared machine); jobs = 2 runs medsyn beside the two textbook scripts in turn (a core each on 2 cores);
    jobs = 1 runs them one after the other (a quiet core each). The machine load of every
    command is recorded. Sides named in `skip` are not run; an earlier record of theirs (e.g. a killed run, or
    one measured by an earlier invocation) is kept and shown as such."""
    from concurrent.futures import ThreadPoolExecutor

    folder = work / "compare"
    os.environ["OMP_NUM_THREADS"] = COMPARE_THREADS  # medsyn's torch reads it at start-up
    todo = compare_commands(data, folder, smoke, models)

    def one(name: str) -> dict[str, Any]:
        log = folder / "logs" / f"{name}.log"

        def parse(record: dict[str, Any]) -> None:  # a textbook script's last line is its JSON summary
            if name != "medsyn" and record["exit_code"] == 0:
                record["summary"] = json.loads(log.read_text(errors="replace").strip().splitlines()[-1])

        return recorded(f"compare {name}", todo[name], folder / "steps" / f"{name}.json", log, finish=parse)[0]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(one, name) for name in todo if name not in skip}
        records = [futures[n].result() if n in futures else {**(_read_json(folder / "steps" / f"{n}.json") or {}),
                                                       "skipped": True} for n in todo]  # fmt: skip
    result = {"steps": dict(zip(todo, records, strict=True)),
              "medsyn": _read_json(folder / "medsyn" / "results.json"), "threads": COMPARE_THREADS,
              "budget_min": 0.2 if smoke else COMPARE_BUDGET_MIN, "jobs": jobs}  # fmt: skip
    write_json_atomic(folder / "result.json", result)
    return result


def _logged_rate(sample_grid: str | None) -> float | None:
    """Median training img/s of a medsyn run (its losses.csv, beside the samples/ folder of `sample_grid`)."""
    return _train_stats(Path(sample_grid).parents[1])["median_img_per_s"] if sample_grid else None


def _synthetic_n(med: Mapping[str, Any]) -> int | None:
    """Synthetic images per medsyn model: `--n`, else what each model generated (the real training size)."""
    sizes = {dig(m, "generate", "images") for m in med.get("models") or []}
    return dig(med, "config", "n") or (sizes.pop() if len(sizes) == 1 else None)


def compare_section(r: Mapping[str, Any]) -> str:
    """One table: the four sides' utility, diversity, privacy and speed, with the load each step ran under."""
    steps, med = r.get("steps") or {}, r.get("medsyn") or {}
    rows = []
    for m in med.get("models") or []:
        s, p, g = m.get("summary") or {}, m.get("progress") or {}, m.get("generate") or {}
        failing = [c["check"] for c in s.get("privacy_checks") or [] if c.get("level") == "fail"]
        ratio, trtr, tstr = s.get("ratio") or [None] * 3, s.get("trtr") or [None] * 3, s.get("tstr") or [None] * 3
        rows.append([f"medsyn {m['model']} (width {dig(m, 'key', 'config', 'widths', m['model']) or 'n/a'})",
                     f"{fmt(ratio[0])} [{fmt(ratio[1])}, {fmt(ratio[2])}]",
                     f"{fmt(trtr[0])} [{fmt(trtr[1])}, {fmt(trtr[2])}]", f"{fmt(tstr[0])} [{fmt(tstr[1])}, {fmt(tstr[2])}]",
                     fmt(s.get("recall")), fmt(s.get("coverage")),
                     f"{fmt(s.get('fid'), 2)} ({fmt(s.get('fid_real_vs_real'), 2)})",
                     ", ".join(failing) or f"none of {len(s.get('privacy_checks') or [])} fail",
                     f"{fmt(p.get('train_seconds'), 0)} s, {fmt(p.get('steps'))} steps, "
                     f"{fmt(_logged_rate(m.get('samples')), 0)} img/s",
                     f"{fmt(g.get('wall_s'), 0)} s ({fmt(g.get('img_per_s'), 1)} img/s)",
                     f"{fmt(dig(m, 'train', 'load_before'), 2)} → {fmt(dig(m, 'train', 'load_after'), 2)}"])  # fmt: skip
    for name in ("textbook-ddpm", "textbook-cgan"):
        st = steps.get(name) or {}
        t = st.get("summary")
        if not t:
            why = "stopped by hand" if st.get("skipped") and st.get("exit_code") else f"exit {st.get('exit_code')}"
            rows.append([name, f"not measured ({why if st else 'not run'}; {fmt(st.get('wall_s'), 0)} s)",
                         *["n/a"] * 9])  # fmt: skip
            continue
        mem = t.get("memorisation_l2_01") or {}
        sd = lambda v: f"{fmt(v[0])} ± {fmt(v[1])}" if isinstance(v, list) else "n/a"  # noqa: E731
        gen_s = t.get("sample_seconds")
        rows.append([f"textbook {name.split('-')[1]} ({fmt(t.get('params_m'), 2)}M params)"
                     if "params_m" in t else f"textbook {name.split('-')[1]}",
                     fmt(t.get("tstr_over_trtr")), sd(t.get("trtr_auroc")), sd(t.get("tstr_auroc")), "n/a", "n/a",
                     "n/a", f"pixel NN: {fmt(mem.get('frac_syn_below_test_p5'), pct=True)} of synthetic closer than "
                            "held-out p5",
                     f"{fmt(t.get('train_seconds') or t.get('gan_seconds'), 0)} s, "
                     f"{fmt(t.get('train_steps') or t.get('gan_steps'))} steps, "
                     f"{fmt(t.get('train_img_per_s') or t.get('gan_img_per_s'), 0)} img/s",
                     f"{fmt(gen_s, 0)} s ({fmt(t['n_synthetic'] / gen_s, 1)} img/s)" if gen_s else "n/a",
                     f"{fmt(dig(st, 'load_1min', 'before'), 2)} → {fmt(dig(st, 'load_1min', 'after'), 2)} "
                     f"(max {fmt(dig(st, 'load_1min', 'max'), 2)})"])  # fmt: skip
    cmds = "\n".join(f"- {n}: `{st.get('command', 'n/a')}` ({fmt(st.get('wall_s'), 0)} s, exit {st.get('exit_code')}, "
                     f"load {fmt(dig(st, 'load_1min', 'before'), 2)} → {fmt(dig(st, 'load_1min', 'after'), 2)})"
                     for n, st in steps.items())  # fmt: skip
    partial = [f"- {n}: `{line.strip()}`" for n, st in steps.items() if not st.get("summary") and n != "medsyn"
               for line in _log_lines(st.get("log"), ("done:", "clf seed"))]  # fmt: skip
    return "\n\n".join([
        f"Every side trained for the same wall budget ({fmt(r.get('budget_min'), 1)} min each"
        + (", not the 10 min the issue asks: the shared CPU did not leave time for more" if (r.get("budget_min") or 0) < 10
           else "") + f"), each process with {r.get('threads')} thread, "
        + {1: "one side after the other, so each had a core to itself",
           2: "in two processes: medsyn's models one after the other in one, the textbook DDPM then the textbook "
              "cDCGAN in the other, so on this 2-core machine each side had a core to itself"}.get(
            r.get("jobs", 3), "all started together (the two DDPMs and the textbook cDCGAN train in the same minutes; "
                              "medsyn's models one after the other)")
        + f". medsyn rows: {fmt(_synthetic_n(med))} "
        "synthetic images per model (the real training size unless `--n` was given), judged by `evaluate --quick` with its defaults (small CNN, 95% CI over test "
        "images), recall/coverage at k = 5 in the real classifier's feature space, FID "
        "with its real-vs-real baseline, every privacy check. Textbook rows: their own small CNN, mean ± std over "
        "seeds, and their pixel nearest-neighbour memorisation test (no FID/recall/coverage measured). The load "
        "column is the 1-minute load average around each medsyn model's last `train` session (a resumed model: "
        "the resume) or each textbook command; the training rate (median of the logged img/s) shows what the "
        "machine gave each side.",
        table(["side", "TSTR/TRTR", "TRTR", "TSTR", "recall", "coverage", "FID (real vs real)", "privacy",
               "training", "sampling", "load 1-min"], rows),
        "Commands (load average before → after each whole command):\n\n" + cmds,
        *(["A side stopped by hand did not finish in the time this run had (on a busy CPU a textbook DDPM samples "
           "each of its 4,708 images with 20 passes of a 1.48M-parameter UNet, and each textbook classifier seed "
           "trains two CNNs); what it had reached, from its log:\n\n" + "\n".join(partial)]
          if partial else []),
    ])  # fmt: skip


def _log_lines(log: str | None, marks: Sequence[str]) -> list[str]:
    """The lines of a command's log (a path relative to the repository) that contain one of `marks`."""
    try:
        text = (REPO / log).read_text(errors="replace") if log else ""
    except OSError:
        return []
    return [line for line in text.splitlines() if any(m in line for m in marks)]


def _cell(row: Mapping[str, str], spec: str) -> str:
    def num(key: str) -> str:
        v = row.get(key, "")
        n = _num(v)
        return fmt(n) if n is not None else (v or "n/a")

    main, *ci_keys = spec.split("|")
    return num(main) + (f" [{num(ci_keys[0])}, {num(ci_keys[1])}]" if ci_keys else "")


def sweep_section(sweep: Path, out_md: Path) -> str:
    """The recorded sweep command, a compact table of results.csv and its figure, copied beside the markdown
    (docs/benchmarks/) so that the file in git shows it."""
    step, csv_path, png = _read_json(sweep / "step.json") or {}, sweep / "out" / "results.csv", sweep / "out" / "sweep.png"
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return f"No sweep results: `{_display(csv_path)}` is missing."
    if not rows:
        return f"No sweep results: `{_display(csv_path)}` has no rows."
    parts = [
        f"`{step.get('command', 'n/a')}`: {fmt(step.get('wall_s'), 0)} s wall, {fmt(step.get('cpu_s'), 0)} s CPU, "
        f"exit {step.get('exit_code', 'n/a')}, started {step.get('start', 'n/a')} (UTC) at {_commits([step])}. "
        "At each point a generator is trained on that point's real training images only (within the time budget), "
        "a synthetic set of the same size and label composition is drawn, and the small CNN is trained on real, "
        "on synthetic and on both; all are tested on the same real test images. 95% CIs (patient bootstrap) in "
        f"brackets; every column is in `{_display(csv_path)}`.",
        table(list(SWEEP_COLUMNS.values()), [[_cell(r, k) for k in SWEEP_COLUMNS] for r in rows]),
    ]
    if png.is_file():
        figure = out_md.parent / "docs" / "benchmarks" / "sweep-samples-pneumoniamnist.png"
        with atomic_path(figure) as tmp:
            shutil.copyfile(png, tmp)
        parts.append(f"![sweep]({os.path.relpath(figure, out_md.parent)})")
    return "\n\n".join(parts)


def gpu_section(flops: Mapping[str, Any] | None) -> str:
    if not flops:
        return "Not measured (run the `run` phase)."
    steps1 = math.ceil(GPU_IMAGES_SEEN / GPU_BATCH)
    stepsn = math.ceil(GPU_IMAGES_SEEN / (GPU_BATCH * GPU_PROCS))
    a100, h100 = (PEAK_TFLOPS[k] * 1e12 for k in ("A100", "H100 SXM"))

    def hours(total: float, peak: float, mfu: float) -> str:
        return fmt(total / (peak * mfu) / 3600, 3)

    rows, cmds = [], []
    for g in flops.get("gans", []):
        total = g["flops_per_image"] * GPU_IMAGES_SEEN
        rows.append([g["model"], g["size"], fmt(g["flops_per_image"] / 1e9, 1), f"{fmt((g['params_g'] + g['params_d']) / 1e6, 1)} M",
                     fmt(total / 1e18, 3), hours(total, a100, MFU[0]), hours(total, a100, MFU[1]), hours(total, h100, MFU[0])])  # fmt: skip
    for name, (n, spec, slug) in FULL_SETS.items():
        for g in flops.get("gans", []):
            tag = f"{slug}-{g['model']}-{g['size']}"
            extra = " --augment ada" if g["model"] == "stylegan2" else ""
            common = f"cache/{slug}{g['size']} --model {g['model']} --size {g['size']}{extra} --batch {GPU_BATCH} --precision bf16 --device cuda"
            cmds += [f"# {name} ({n:,} images), {g['model']} {g['size']} px",
                     f"medsyn data prepare {shlex.quote(spec)} --size {g['size']} --out cache/{slug}{g['size']}",
                     f"medsyn train {common} --steps {steps1} --out runs/{tag}                    # one GPU",
                     f"torchrun --nproc_per_node {GPU_PROCS} -m medsyn train {common} --steps {stepsn} --out runs/{tag}-x{GPU_PROCS}",
                     f"medsyn generate runs/{tag} --n {n} --out synthetic/{tag}",
                     f"medsyn evaluate --real cache/{slug}{g['size']} --synthetic synthetic/{tag} --out eval/{tag} --device cuda", ""]  # fmt: skip
    epochs, seeds = flops.get("eval_epochs", "n/a"), flops.get("eval_seeds", "n/a")
    ev_rows = [[name, c["model"], c["size"], fmt(c["flops_per_image"] / 1e9, 1),
                hours(_eval_flops(c["flops_per_image"], n, epochs, seeds), a100, MFU[0])]
               for name, (n, *_) in FULL_SETS.items() for c in flops.get("classifiers", [])]  # fmt: skip
    return "\n\n".join([
        "**No GPU was measured.** These are estimates, derived as follows, and should be replaced by measured "
        "figures once a GPU run exists. FLOPs per training image were **counted** on the CPU with "
        f"`torch.utils.flop_counter.FlopCounterMode` (torch {flops.get('torch')}; matrix multiplies and convolutions "
        "only; one discriminator step on a real and a generated batch plus one generator step, forward and backward; "
        "R1, ADA and EMA excluded), model width 64, 14 classes. Then",
        f"`GPU hours = FLOPs per image × images seen / (peak × utilisation) / 3600`, with images seen = "
        f"{GPU_IMAGES_SEEN:,} (batch {GPU_BATCH}: {steps1:,} steps on one GPU), peak = dense bf16 tensor-core peak "
        f"(A100 {PEAK_TFLOPS['A100']:.0f}, H100 SXM {PEAK_TFLOPS['H100 SXM']:.0f} TFLOP/s) and an **assumed** utilisation "
        f"of {MFU[0]:.0%} (optimistic) or {MFU[1]:.0%} (small convnets at batch {GPU_BATCH} are often launch- and "
        "memory-bound). GAN training cost does not depend on the data set size, only on images seen.",
        table(["model", "px", "GFLOP / image", "params G+D", "total EFLOP", f"A100 h @{MFU[0]:.0%}",
               f"A100 h @{MFU[1]:.0%}", f"H100 h @{MFU[0]:.0%}"], rows),
        f"With `torchrun --nproc_per_node {GPU_PROCS}` and `--batch {GPU_BATCH}` per process the global batch is "
        f"{GPU_BATCH * GPU_PROCS}, so {stepsn:,} steps show the same images: the same GPU hours in 1/{GPU_PROCS} of the "
        "wall time at ideal scaling (gradient all-reduce not included; the larger global batch changes the "
        "optimisation, so compare FID before trusting it). The CUDA/NCCL path has not been run in this project yet.",
        "```bash\n" + "\n".join(cmds).rstrip() + "\n```",
        f"**Evaluation** (full settings, not `--quick`): the classifier is trained {seeds} seeds × up to {epochs} epochs "
        "on real (TRTR), synthetic (TSTR) and both; with as many synthetic as real images and every image counted as "
        f"a training image, that is at most `{seeds} × {epochs} × 4N` forward+backward passes. Upper bounds at "
        f"{MFU[0]:.0%} of an A100 (feature extraction and the re-identification network add less than this):",
        table(["data set", "classifier", "px", "GFLOP / image (fwd+bwd)", f"A100 h @{MFU[0]:.0%}, upper bound"], ev_rows),
    ])  # fmt: skip


def _eval_flops(per_image: float, n: int, epochs: Any, seeds: Any) -> float:
    return (
        float(seeds) * float(epochs) * 4 * n * per_image
        if isinstance(epochs, int) and isinstance(seeds, int)
        else math.nan
    )


def render(results: Sequence[Mapping[str, Any]], machine: Mapping[str, Any], flops: Mapping[str, Any] | None,
           write_command: str, sweep: Path | None, out_md: Path,
           compare: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The whole BENCHMARKS.md, from the stored JSON only."""
    smoke = machine.get("smoke") or any(r.get("smoke") for r in results)
    run_cmds = machine.get("run_commands") or ["n/a"]
    parts = [
        "# Benchmarks",
        "<!-- Generated by benchmarks/make_benchmarks_md.py from measured results. Do not edit by hand. -->",
        *(["> **SMOKE RUN**: tiny settings for checking the script; these numbers mean nothing."] if smoke else []),
        "This file is written by `benchmarks/make_benchmarks_md.py` from the JSON results it measured; never edit it "
        "by hand. Measured with:\n\n```bash\n" + "\n".join(run_cmds) + f"\n```\n\nand rendered with `{write_command}`.",
        "## Machine", machine_section(machine),
    ]  # fmt: skip
    parts += [experiment_section(r) for r in results]
    if sweep is not None:
        parts += ["## Sweep: samples per class (PneumoniaMNIST)", sweep_section(sweep, out_md)]
    if compare is not None:
        parts += [COMPARE_TITLE, compare_section(compare)]
    parts += [GPU_TITLE, gpu_section(flops)]
    return "\n\n".join(parts).rstrip() + "\n"


COMPARE_TITLE = "## GAN or diffusion: PneumoniaMNIST side by side"
GPU_TITLE = "## Full-size runs on GPUs: recipe and estimated cost"


def splice_section(text: str, title: str, body: str, before: str, prefix: str | None = None) -> str:
    """`text` with the section `title` replaced by `body` (or inserted before the section `before`, else at the
    end): how one newly measured section joins a BENCHMARKS.md whose other results were measured elsewhere.
    `prefix`: replace the section whose heading starts with it (an experiment's heading carries its settings)."""
    lines = text.rstrip("\n").split("\n")
    new = [title, "", *body.rstrip("\n").split("\n"), ""]
    hit = next((i for i, line in enumerate(lines) if line == title or (prefix and line.startswith(prefix))), None)
    if hit is not None:
        end = next((i for i in range(hit + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[hit:end] = new
    else:
        at = lines.index(before) if before in lines else len(lines)
        lines[at:at] = [""] * (at == len(lines) and lines[-1] != "") + new
    return "\n".join(lines).rstrip("\n") + "\n"


def measured_on(info: Mapping[str, Any]) -> str:
    """One line naming the machine of a section measured apart from the rest of the file."""
    return (f"This section was measured on its own, on {info.get('cpu', 'n/a')} ({info.get('cores', 'n/a')} cores "
            f"visible), started {info.get('date', 'n/a')} (UTC); the Machine section above describes the run that "
            "measured the other sections.")  # fmt: skip


def section_phase(args: argparse.Namespace, work: Path, out: Path) -> None:
    """Re-render only the sections of `args.datasets` (experiments and/or compare) into the existing `out`,
    leaving every other section as it is: a re-measured data set joins the file without re-running the rest."""
    text, done = out.read_text() if out.is_file() else "", []
    machine = _read_json(work / "machine.json") or {}
    for exp in experiments(args.data, args.smoke):
        if exp.key in args.datasets and (r := _read_json(work / exp.key / "result.json")):
            body = experiment_section(r)
            title, rest = body.split("\n\n", 1)
            text = splice_section(text, title, f"{measured_on(machine)}\n\n{rest}", COMPARE_TITLE,
                                  prefix=f"## {exp.title} (")  # fmt: skip
            done.append(exp.key)
    if "compare" in args.datasets and (result := _read_json(work / "compare" / "result.json")):
        text = splice_section(text, COMPARE_TITLE, f"{measured_on(machine)}\n\n{compare_section(result)}", GPU_TITLE)
        done.append("compare")
    if not done:
        raise SystemExit(f"no results for {', '.join(args.datasets)} in {_display(work)}; run them first")
    write_text_atomic(out, text)
    print(f"wrote the {', '.join(done)} section(s) of {out}")


def write_phase(args: argparse.Namespace, work: Path, out: Path) -> None:
    results = [r for e in experiments(args.data, args.smoke) if e.key in args.datasets
               if (r := _read_json(work / e.key / "result.json"))]  # fmt: skip
    text = render(results, _read_json(work / "machine.json") or {}, _read_json(work / "gpu_flops.json"),
                  _own_command(), work / "sweep" if "sweep" in args.datasets else None, out,
                  _read_json(work / "compare" / "result.json") if "compare" in args.datasets else None)  # fmt: skip
    write_text_atomic(out, text)
    print(f"wrote {out} ({len(results)} data set(s))")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", nargs="?", choices=("all", "run", "write", "section"), default="all",
                   help="section: re-render only the --datasets sections into the existing markdown file")
    p.add_argument("--work", type=Path, help="Results folder (default out/benchmarks, or out/benchmarks-smoke).")
    p.add_argument(
        "--out", type=Path, help="Markdown file (default BENCHMARKS.md, or WORK/BENCHMARKS.md with --smoke)."
    )
    p.add_argument("--data", type=Path, default=DATA, help="The shared real data sets (default ../shared/data).")
    p.add_argument("--datasets", default="pneumoniamnist,nih,covid,sweep,compare",
                   help="Comma-separated experiments to run/show (sweep: the PneumoniaMNIST samples sweep; "
                        "compare: GAN vs diffusion side by side with the textbook scripts).")  # fmt: skip
    p.add_argument("--compare-skip", type=lambda v: [s for s in v.split(",") if s], default=[],
                   help="Sides of the compare step not to run (e.g. textbook-ddpm); their earlier record is shown.")
    p.add_argument("--compare-jobs", type=int, choices=(1, 2, 3), default=3,
                   help="Compare sides run at once (1: one after the other, a quiet core each).")
    p.add_argument("--compare-models", default=COMPARE_MODELS,
                   help=f"medsyn's sides of the compare step, as --compare reads them (default {COMPARE_MODELS}).")
    p.add_argument("--smoke", action="store_true", help="Tiny settings (a few minutes) to check the script.")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    work = args.work or REPO / "out" / ("benchmarks-smoke" if args.smoke else "benchmarks")
    out = args.out or (work / "BENCHMARKS.md" if args.smoke else REPO / "BENCHMARKS.md")
    if args.phase in ("all", "run"):
        run_phase(args, work)
    if args.phase in ("all", "write"):
        write_phase(args, work, out)
    if args.phase == "section":
        section_phase(args, work, out)


if __name__ == "__main__":
    main()
