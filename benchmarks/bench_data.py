#!/usr/bin/env python3
"""Data-layer throughput: `prepare` (decode + resize + write) and training-time reads.

Compares images/s read through a torch DataLoader from the prepared memory-mapped cache against the
usual alternative, decoding and resizing the PNG file per item, at 64 px (NIH sample) and 256 px
(covid-chestxray, long side 256). Prints one table; run it on an otherwise idle machine.

Usage: benchmarks/bench_data.py [--data ../shared/data] [--epochs 3] [--workers 0] [--batch 64]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medsyn.data import open_dataset, prepare
from medsyn.data.images import fit_square

REPO = Path(__file__).resolve().parents[1]


class DecodePerItem(Dataset):
    """The baseline: decode the PNG and resize it every time an item is read."""

    def __init__(self, spec: str, size: int) -> None:
        self.src, self.size = open_dataset(spec), size
        self.labels = torch.from_numpy(np.nan_to_num(self.src.labels()))

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = fit_square(self.src.read_image(i), self.size)
        return torch.from_numpy(np.round(img * 255).astype(np.uint8)), self.labels[i]


def read_rate(ds: Dataset, batch: int, workers: int, epochs: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    for _ in loader:  # warm-up epoch (page cache, worker start)
        break
    n, t = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(2)
    data = Path(a.data)
    cases = [
        ("nih-cxr14-sample 64px", f"nih:{data / 'nih-cxr14-sample'}", 64),
        ("covid-chestxray 256px", f"ieee8023:{data / 'covid-chestxray'}", 256),
        ("phantom 64px", "phantom?n=4000", 64),
        ("pneumoniamnist 64px", f"medmnist:{data / 'pneumoniamnist' / 'pneumoniamnist.npz'}", 64),
    ]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"loader workers {a.workers}, batch {a.batch}")  # fmt: skip
    print(f"{'dataset':26s} {'N':>6s} {'prepare img/s':>14s} {'cache read img/s':>17s} {'decode/item img/s':>18s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, size in cases:
            t = time.perf_counter()
            ds = prepare(spec, size, Path(tmp) / name.replace(" ", "_"), quiet=True)
            prep = len(ds) / (time.perf_counter() - t)
            cached = read_rate(ds.torch_dataset(), a.batch, a.workers, a.epochs)
            if spec.startswith(("nih", "ieee8023")):
                per_item = read_rate(DecodePerItem(spec, size), a.batch, a.workers, 1)
                ratio = f"{cached / per_item:6.1f}x"
            else:
                per_item, ratio = float("nan"), "   n/a"
            print(f"{name:26s} {len(ds):6d} {prep:14.0f} {cached:17.0f} {per_item:18.0f} {ratio:>7s}")


if __name__ == "__main__":
    main()
