#!/usr/bin/env python3
"""Label fidelity on PneumoniaMNIST (28 px): do synthetic images show the class they were asked for?

For each model (cgan, acgan, stylegan2): train on the real training split within a wall-clock budget
(calibrated in chunks: train, measure, `--resume` with more steps; resume is exact, so the result equals
one run of the final length), generate `--per-class` images per class, and score them with a small CNN
trained on the real training split. Reported: the CNN's AUROC on the real test split (the judge's own
quality) and on the synthetic set against the requested labels (target >= 0.9). A sample grid per model
is written to --grids.

    .venv/bin/python benchmarks/bench_quality_pneumonia.py [--budget-min 20] [--models cgan,acgan,stylegan2]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from medsyn.data.cache import PreparedDataset, prepare, to_unit
from medsyn.generate import generate
from medsyn.models.classifiers import build_classifier
from medsyn.train import TrainConfig, train
from medsyn.train.logs import save_grid

DATA = Path("/work/shared/data/pneumoniamnist/pneumoniamnist.npz")
SETTINGS = {  # per model: what a user would pick for a 4.7k-image, 28 px set
    "cgan": dict(width=32, batch=64),
    "acgan": dict(width=32, batch=64),
    "stylegan2": dict(width=32, batch=32, augment="diffaugment"),
}


def judge(ds: PreparedDataset, epochs: int, seed: int = 0) -> torch.nn.Module:
    """Small CNN trained on the real training split to tell pneumonia (class 1) from normal."""
    torch.manual_seed(seed)
    rows = ds.rows("train")
    x = to_unit(torch.from_numpy(np.asarray(ds.images[rows])))
    y = torch.from_numpy(np.nan_to_num(ds.labels[rows]).argmax(1))
    net = build_classifier("smallcnn", ds.channels, 2, ds.size)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def pneumonia_prob(net: torch.nn.Module, x_uint8: np.ndarray) -> np.ndarray:
    x = to_unit(torch.from_numpy(x_uint8))
    return torch.cat([net(b).softmax(1)[:, 1] for b in x.split(512)]).numpy()


def train_within(cfg: TrainConfig, run: Path, budget_s: float) -> tuple[int, float]:
    """Train for about `budget_s` seconds by resuming with more steps; returns (steps, img/s)."""
    start = time.perf_counter()
    steps = 100
    train(TrainConfig(**{**cfg.to_dict(), "steps": steps}), run, quiet=True)
    while (left := budget_s - (time.perf_counter() - start)) > 30:
        rate = steps / (time.perf_counter() - start)
        steps += max(50, int(rate * left * 0.95))
        train(TrainConfig(**{**cfg.to_dict(), "steps": steps}), run, resume=True, quiet=True)
    with open(run / "losses.csv", newline="") as fh:
        rates = [float(r["img_per_s"]) for r in csv.DictReader(fh)]
    return steps, float(np.median(rates))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-min", type=float, default=20.0, help="total training minutes, split over models")
    p.add_argument("--models", default="cgan,acgan,stylegan2")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    p.add_argument("--grids", type=Path, default=Path("/tmp"))
    a = p.parse_args()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        ds = prepare(f"medmnist:{DATA}", 28, work / "cache", quiet=True)
        net = judge(ds, epochs=3)
        test = ds.rows("test")
        real_auc = roc_auc_score(np.nan_to_num(ds.labels[test])[:, 1], pneumonia_prob(net, np.asarray(ds.images[test])))
        print(f"judge (smallcnn on real train) AUROC on the real test split: {real_auc:.3f}")
        budget = a.budget_min * 60 / len(models)
        for model in models:
            cfg = TrainConfig(data=str(ds.path), model=model, size=28, device="cpu", log_every=50,
                              sample_every=10**9, ckpt_every=500, **SETTINGS[model])  # fmt: skip
            steps, rate = train_within(cfg, work / model, budget)
            syn = generate(work / model, None, work / f"{model}-synthetic", per_class=a.per_class, quiet=True)
            with open(syn / "labels.csv", newline="") as fh:
                table = list(csv.DictReader(fh))
            images = np.stack([np.asarray(Image.open(syn / r["path"]))[None] for r in table])
            wanted = np.array([int(r["pneumonia"]) for r in table])
            auc = roc_auc_score(wanted, pneumonia_prob(net, images))
            grid = torch.from_numpy(np.concatenate([images[wanted == 0][:8], images[wanted == 1][:8]]))
            save_grid(grid.float() / 127.5 - 1, ["normal", "pneumonia"], a.grids / f"pneumonia-{model}.png")
            print(f"{model:<10} {steps:6d} steps ({rate:5.0f} img/s, {budget / 60:.1f} min): label-fidelity AUROC "
                  f"{auc:.3f} on {len(table)} synthetic images (target >= 0.9); grid {a.grids / f'pneumonia-{model}.png'}")  # fmt: skip


if __name__ == "__main__":
    main()
