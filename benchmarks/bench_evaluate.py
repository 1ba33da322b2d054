"""Time `medsyn evaluate --quick` stage by stage: N real vs N synthetic phantom images at 64 px, with the
peak memory of each stage and a scaling of each stage's cost to ChestX-ray14 size.

    .venv/bin/python benchmarks/bench_evaluate.py                        # 10k vs 10k, 64 px, --quick
    .venv/bin/python benchmarks/bench_evaluate.py --n 20000 --settings '{"classifier": {"epochs": 1}}'
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda --full   # the full settings on a GPU

`--target-real/--target-synthetic/--target-size` (default 112,120 / 100,000 / 128 px) scale each measured
stage by how its work grows (stated per stage in SCALING: images x pixels for the networks, query x
reference pairs for the nearest-neighbour searches, whose pixel space is capped at 64 px): a CPU-time
projection of the work, not a GPU measurement (no GPU was available where this was written).

The real set is the phantom prepared into a cache (a one-off, timed separately); the "synthetic" set is
other phantom images (another seed: unseen patients), written as PNGs with labels.csv, so the load stage
decodes files as it would for a real synthetic set. Prints wall and CPU seconds per stage (CPU time
counts all threads, and is the steadier figure on a shared machine) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medsyn.data.cache import prepare
from medsyn.data.phantom import PHANTOM_CLASSES, render_phantom
from medsyn.evaluate.pipeline import evaluate
from medsyn.report.summary import summary_rows

GROUPS = {  # benchmark stage -> prefixes of the pipeline's stage names
    "load (real cache + synthetic PNGs)": ("real data", "synthetic data"),
    "classifier training (utility + feature net)": ("utility", "features: domain"),
    "saliency (second real classifier + Grad-CAM)": ("saliency",),
    "features (classifier + pixels)": ("features: smallcnn", "features: densenet", "features: pixels"),
    "FID / KID / PRDC / per-class / intensity": ("fidelity",),
    "diversity (synthetic self-distances)": ("diversity",),
    "nearest neighbours / DCR": ("privacy: DCR",),
    "membership inference": ("privacy: membership",),
    "re-identification (train + verify + link)": ("privacy: re-identification",),
    "report (figures + HTML)": ("report",),
}

PIXEL_CAP = 64  # PixelFeatures downsample to at most 64 px, so the pixel-space searches do not grow with size


def scaling(group: str, n_real: int, n_syn: int, size: int, t_real: int, t_syn: int, t_size: int) -> tuple[float, str]:
    """How much more work a stage does at the target scale, and the law used (per stage)."""
    px = (t_size / size) ** 2
    images = (t_real + t_syn) / (n_real + n_syn)
    pairs = (t_real * (t_real + t_syn)) / (n_real * (n_real + n_syn))  # queries x references, both grow
    cap = (min(t_size, PIXEL_CAP) / min(size, PIXEL_CAP)) ** 2
    laws = {
        "load (real cache + synthetic PNGs)": (images * px, "images x pixels"),
        "classifier training (utility + feature net)": (images * px, "images x pixels per epoch"),
        "saliency (second real classifier + Grad-CAM)": (t_real / n_real * px, "real images x pixels per epoch"),
        "features (classifier + pixels)": (images * px, "images x pixels"),
        "FID / KID / PRDC / per-class / intensity": (pairs, "PRDC k-NN: N^2 (FID/KID fixed cost)"),
        "diversity (synthetic self-distances)": (1.0, "fixed: at most 2000 images per side"),
        "nearest neighbours / DCR": (pairs * cap, "query x reference pairs x pixel dim (capped at 64 px)"),
        "membership inference": (pairs * cap, "query x reference pairs x pixel dim (capped at 64 px)"),
        "re-identification (train + verify + link)": (px * images, "training steps x pixels + embeddings"),
        "report (figures + HTML)": (1.0, "fixed"),
    }
    return laws[group]


def write_synthetic(folder: Path, n: int, size: int, seed: int) -> None:
    """Phantom images of another seed as PNGs + labels.csv (the csv layout `medsyn generate` writes)."""
    if (folder / "labels.csv").is_file():
        return
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, n, 1000):
        batch = render_phantom(min(1000, n - start), size, seed=seed, start=start)
        for j, img in enumerate(np.round(batch.images * 255).astype(np.uint8)):
            path = f"images/{start + j:07d}.png"
            Image.fromarray(img[0]).save(folder / path)
            rows.append({"path": path, **{c: int(v) for c, v in zip(PHANTOM_CLASSES, batch.labels[j], strict=True)}})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="real phantom images")
    ap.add_argument("--synthetic-n", type=int, default=None, help="synthetic images (default: --n)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="full settings instead of --quick")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medsyn-bench-evaluate"))
    ap.add_argument("--settings", type=json.loads, default=None, help="evaluation setting overrides (JSON)")
    ap.add_argument("--target-real", type=int, default=112_120)
    ap.add_argument("--target-synthetic", type=int, default=100_000)
    ap.add_argument("--target-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    n_syn = args.synthetic_n or args.n
    work = args.workdir
    load_before = os.getloadavg()
    t = time.perf_counter()
    prepare(f"phantom?n={args.n}", args.size, work / f"real-{args.n}-{args.size}", quiet=True)
    t_prepare = time.perf_counter() - t
    t = time.perf_counter()
    write_synthetic(work / f"synthetic-{n_syn}-{args.size}", n_syn, args.size, seed=1)
    t_write = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    metrics = evaluate(
        work / f"real-{args.n}-{args.size}", work / f"synthetic-{n_syn}-{args.size}", work / "out",
        quick=not args.full, device=args.device, quiet=True, settings=args.settings,
    )  # fmt: skip
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    load_after = os.getloadavg()

    print(f"\nmedsyn evaluate {'full' if args.full else '--quick'}: {args.n} real vs {n_syn} synthetic phantom "
          f"images, {args.size} px, device {args.device}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    print(f"setup (not part of evaluate): prepare real cache {t_prepare:.1f} s, write synthetic PNGs {t_write:.1f} s\n")
    print(f"settings overrides: {json.dumps(args.settings)}")
    timings = metrics["timings"]
    target = (f"{args.target_real:,} real + {args.target_synthetic:,} synthetic at {args.target_size} px")
    print(f"{'stage':46s} {'wall s':>8s} {'CPU s':>8s} {'peak MB':>8s} {'x work':>7s} {'CPU s at target':>15s}  law")
    rows = []
    for group, prefixes in GROUPS.items():
        names = [k for k in timings if k.startswith(prefixes)]
        wall = sum(timings[k]["wall_s"] for k in names)
        cpu = sum(timings[k]["cpu_s"] for k in names)
        peak = max((timings[k].get("peak_rss_mb") or 0 for k in names), default=0)
        factor, law = scaling(group, args.n, n_syn, args.size, args.target_real, args.target_synthetic, args.target_size)
        rows.append({"stage": group, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "work_factor": factor,
                     "cpu_s_at_target": cpu * factor, "law": law})  # fmt: skip
        print(f"{group:46s} {wall:8.1f} {cpu:8.1f} {peak:8.0f} {factor:7.1f} {cpu * factor:15.0f}  {law}")
    print(f"{'total (evaluate call)':46s} {total:8.1f} {total_cpu:8.1f} {'':8s} {'':7s} "
          f"{sum(r['cpu_s_at_target'] for r in rows):15.0f}  ({target}, CPU time)\n")  # fmt: skip
    for name, v in timings.items():
        print(f"  {name:58s} {v['wall_s']:8.1f} {v['cpu_s']:8.1f} {v.get('peak_rss_mb') or 0:8.0f}")
    print()
    if args.json:
        args.json.write_text(json.dumps({"n_real": args.n, "n_synthetic": n_syn, "size": args.size,
                                         "settings": args.settings, "load_before": load_before[0],
                                         "load_after": load_after[0], "total_wall_s": total, "total_cpu_s": total_cpu,
                                         "target": target, "stages": rows, "timings": timings}, indent=2))  # fmt: skip
    for question, level, numbers in summary_rows(metrics):
        print(f"{question:11s} {level.upper():5s} {numbers}")


if __name__ == "__main__":
    main()
