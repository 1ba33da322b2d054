"""Phantom benchmark: render throughput, and how hard the findings are for a small CNN.

Why: the phantom is the default dataset of the demo and the tests, so it must render fast enough to be
generated on the fly, and be neither trivial (a tiny CNN at AUROC 1.0 on everything proves nothing) nor
unlearnable. Run: `.venv/bin/python benchmarks/bench_phantom.py` (about two minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medsyn.data.phantom import PHANTOM_CLASSES, render_phantom


def throughput(size: int, n: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` images per second for rendering `n` images at `size` px: by wall clock, and by
    this process's CPU time (the fairer figure on a machine shared with other jobs)."""
    render_phantom(8, size)  # warm-up
    wall = cpu = float("inf")
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        render_phantom(n, size, seed=r)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return n / wall, n / cpu


def small_cnn(classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), *block(32, 64), *block(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes),
    )  # fmt: skip


def difficulty(n: int, size: int, epochs: int, seed: int) -> dict[str, float]:
    """Train a small CNN on phantom images split by patient (80/20) and return per-class test AUROC."""
    batch = render_phantom(n, size, seed=seed)
    patients = np.array(batch.patient_ids)
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    test_patients = set(rng.choice(unique, size=len(unique) // 5, replace=False))
    is_test = np.array([p in test_patients for p in patients])
    x = torch.from_numpy(batch.images * 2 - 1)
    y = torch.from_numpy(batch.labels)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)

    torch.manual_seed(seed)
    model = small_cnn(len(PHANTOM_CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(train) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(train)
        for k in range(len(train) // 64):
            rows = torch.from_numpy(order[k * 64 : (k + 1) * 64])
            opt.zero_grad()
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x[torch.from_numpy(test[k : k + 256])]) for k in range(0, len(test), 256)])
    truth = y[torch.from_numpy(test)].numpy()
    return {c: float(roc_auc_score(truth[:, k], scores[:, k].numpy())) for k, c in enumerate(PHANTOM_CLASSES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="images for the CNN (per_patient=4)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cnn", action="store_true", help="only measure render throughput")
    args = parser.parse_args()
    torch.set_num_threads(1)

    for size, n in ((64, 4096), (256, 256)):
        wall, cpu = throughput(size, n)
        print(f"render {size:>3} px: {wall:7.0f} img/s wall, {cpu:7.0f} img/s of CPU time (best of 3, {n} images)")
    if args.skip_cnn:
        return
    t0 = time.perf_counter()
    auroc = difficulty(args.n, args.size, args.epochs, args.seed)
    print(
        f"small CNN, {args.n} images at {args.size} px, patient split 80/20, {args.epochs} epochs, "
        f"{time.perf_counter() - t0:.0f} s:"
    )
    for c, v in auroc.items():
        print(f"  {c:<14} test AUROC {v:.3f}")
    print(f"  {'mean':<14} test AUROC {np.mean(list(auroc.values())):.3f}")


if __name__ == "__main__":
    main()
