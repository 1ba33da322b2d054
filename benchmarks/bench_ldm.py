#!/usr/bin/env python3
"""Latent vs pixel diffusion on CPU: training and sampling throughput of `ldm` against `ddpm`, 28 and 64 px.

Training: images/s of one optimisation step (loss forward + backward + AdamW) at batch 64 with each model's
default options, for ldm both stages (the autoencoder's L1 + KL step, the latent denoiser's step), in fp32 and
in bf16 autocast + channels_last (what `--precision auto` chooses between). Sampling: images/s of G(z, y) at
batch 64 with the default 20 DDIM steps and guidance 2 (two UNet branches per step), bf16. Weights are random
(throughput does not depend on training). The variants run in turn, median of the timed repeats; one JSON
line per cell with the 1-minute load average before and after.

    flock /tmp/medsyn-bench.lock taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ldm.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from medsyn.models import GANConfig
from medsyn.models.ldm import LatentAutoencoder
from medsyn.models.registry import build_generator
from medsyn.train.autoencoder import kl_divergence

K = 2  # PneumoniaMNIST: normal / pneumonia


def _median_s(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: oneDNN kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step(net: torch.nn.Module, loss: Callable[[], torch.Tensor], bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return run


def train_cells(size: int, width: int, batch: int, repeats: int, only: str | None = None) -> list[dict]:
    out = []
    x = torch.rand(batch, 1, size, size) * 2 - 1
    y = torch.randint(0, 2, (batch, K)).float()
    for bf16 in (False, True):
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        xb = x.contiguous(memory_format=fmt)
        torch.manual_seed(0)
        nets = {
            "ddpm": build_generator(GANConfig("ddpm", size, 1, K, width=width)),
            "ldm denoiser": build_generator(GANConfig("ldm", size, 1, K, width=width)),
            "ldm autoencoder": LatentAutoencoder(GANConfig("ldm", size, 1, K, width=width)),
        }
        for name, net in nets.items():
            if only is not None and name != only:
                continue
            net = net.train().to(memory_format=fmt)
            if name == "ldm autoencoder":
                vae = net.vae

                def loss(vae: torch.nn.Module = vae, xb: torch.Tensor = xb) -> torch.Tensor:
                    recon, mu, sigma = vae(xb)
                    return (recon.float() - xb).abs().mean() + 1e-6 * kl_divergence(mu, sigma)
            else:

                def loss(net: torch.nn.Module = net, xb: torch.Tensor = xb) -> torch.Tensor:
                    return net.loss(xb, y)

            load0 = os.getloadavg()[0]
            s = _median_s(_step(net, loss, bf16), repeats)
            out.append({"what": "train", "model": name, "size": size, "width": width, "batch": batch,
                        "precision": "bf16" if bf16 else "fp32", "s_per_step": round(s, 3),
                        "img_per_s": round(batch / s, 1), "load": [load0, os.getloadavg()[0]]})  # fmt: skip
            print(json.dumps(out[-1]), flush=True)
    return out


def sample_cells(size: int, width: int, batch: int) -> list[dict]:
    out = []
    y = torch.randint(0, 2, (batch, K)).float()
    for name in ("ddpm", "ldm"):
        torch.manual_seed(0)
        G = build_generator(GANConfig(name, size, 1, K, width=width)).eval().to(memory_format=torch.channels_last)
        z = torch.randn(batch, G.z_dim)
        load0 = os.getloadavg()[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = _median_s(lambda G=G, z=z: G(z, y), 1)
        out.append({"what": "sample", "model": name, "size": size, "width": width, "batch": batch,
                    "ddim_steps": G.ddim_steps, "guidance": G.guidance, "precision": "bf16",
                    "img_per_s": round(batch / s, 1), "load": [load0, os.getloadavg()[0]]})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--autoencoder-only", action="store_true", help="Only the autoencoder's training step.")
    args = ap.parse_args()
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    for size in (28, 64):
        train_cells(size, args.width, args.batch, args.repeats, "ldm autoencoder" if args.autoencoder_only else None)
        if not args.autoencoder_only:
            sample_cells(size, args.width, args.batch)


if __name__ == "__main__":
    main()
