"""Time `medsyn evaluate --quick` stage by stage: N real vs N synthetic phantom images at 64 px.

    .venv/bin/python benchmarks/bench_evaluate.py                        # 10k vs 10k, 64 px, --quick
    .venv/bin/python benchmarks/bench_evaluate.py --n 2000 --synthetic-n 1500
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda --full   # the full settings on a GPU

The real set is the phantom prepared into a cache (a one-off, timed separately); the "synthetic" set is
other phantom images (another seed: unseen patients), written as PNGs with labels.csv, so the load stage
decodes files as it would for a real synthetic set. Prints wall and CPU seconds per stage (CPU time
counts all threads, and is the steadier figure on a shared machine) and the load average.
"""

from __future__ import annotations

import argparse
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
    "features (classifier + pixels)": ("features: smallcnn", "features: densenet", "features: pixels"),
    "FID / KID / PRDC / per-class / intensity": ("fidelity",),
    "nearest neighbours / DCR": ("privacy: DCR",),
    "membership inference": ("privacy: membership",),
    "re-identification (train + verify + link)": ("privacy: re-identification",),
    "report (figures + HTML)": ("report",),
}


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
        quick=not args.full, device=args.device, quiet=True,
    )  # fmt: skip
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    load_after = os.getloadavg()

    print(f"\nmedsyn evaluate {'full' if args.full else '--quick'}: {args.n} real vs {n_syn} synthetic phantom "
          f"images, {args.size} px, device {args.device}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    print(f"setup (not part of evaluate): prepare real cache {t_prepare:.1f} s, write synthetic PNGs {t_write:.1f} s\n")
    timings = metrics["timings"]
    print(f"{'stage':46s} {'wall s':>8s} {'CPU s':>8s}")
    for group, prefixes in GROUPS.items():
        names = [k for k in timings if k.startswith(prefixes)]
        wall = sum(timings[k]["wall_s"] for k in names)
        cpu = sum(timings[k]["cpu_s"] for k in names)
        print(f"{group:46s} {wall:8.1f} {cpu:8.1f}")
    print(f"{'total (evaluate call)':46s} {total:8.1f} {total_cpu:8.1f}\n")
    for name, v in timings.items():
        print(f"  {name:58s} {v['wall_s']:8.1f} {v['cpu_s']:8.1f}")
    print()
    for question, level, numbers in summary_rows(metrics):
        print(f"{question:11s} {level.upper():5s} {numbers}")


if __name__ == "__main__":
    main()
