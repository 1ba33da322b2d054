"""Generation throughput of the diffusion model on CPU (DDIM + classifier-free guidance), at 28 and 64 px.

    .venv/bin/python benchmarks/bench_sampling.py                    # 28 px width 16, 64 px width 32
    .venv/bin/python benchmarks/bench_sampling.py --threads 2 --images 256

What `medsyn generate` spends per image is the denoiser's forward passes: DDIM steps x 2 with guidance
(conditional + unconditional branch in one doubled batch; MONAI's DiffusionInferer), 1x without. Weights
are random (throughput does not depend on training). Prints one JSON line per setting with img/s on the
wall clock and per CPU second, and the 1-minute load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from medsyn.models import GANConfig
from medsyn.models.registry import build_generator

SETTINGS = ((28, 16, {}), (64, 32, {"mult": [1, 2, 2, 2], "attention": [False, False, False, True]}))


def measure(size: int, width: int, extra: dict, images: int, batch: int, steps: int, guidance: float) -> dict:
    torch.manual_seed(0)
    G = build_generator(GANConfig("ddpm", size, 1, 2, width=width, extra=extra)).eval()
    G.sampling(steps, guidance)
    y = torch.randint(0, 2, (batch, 2)).float()
    G(torch.randn(2, G.z_dim), y[:2])  # warm-up (oneDNN kernel selection)
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    done = 0
    while done < images:
        n = min(batch, images - done)
        G(torch.randn(n, G.z_dim), y[:n])
        done += n
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "size": size, "width": width, "params_m": round(sum(p.numel() for p in G.parameters()) / 1e6, 2),
        "ddim_steps": steps, "guidance": guidance, "images": images, "batch": batch, "threads": torch.get_num_threads(),
        "img_per_s": round(images / wall, 2), "img_per_cpu_s": round(images / cpu, 2), "load_1min": load,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ddim-steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=2.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for size, width, extra in SETTINGS:
        print(json.dumps(measure(size, width, extra, a.images, a.batch, a.ddim_steps, a.guidance)), flush=True)


if __name__ == "__main__":
    main()
