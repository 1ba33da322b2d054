"""Throughput of the model zoo on CPU: G and D forward+backward (training) and G generation.

    .venv/bin/python benchmarks/bench_models.py            # 64 px, train batch 64, generation batch 256
    .venv/bin/python benchmarks/bench_models.py --quick    # 32 px, smaller batches (smoke run)

Each cell runs one warm-up call, then timed calls until `--min-time` seconds have passed (at least one).
Modes: fp32 (contiguous) and bf16 (CPU autocast + channels_last). Widths are the per-model defaults a CPU
run would use (DCGAN family 64, StyleGAN2 32).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from medsyn.models import MODELS, GANConfig, build_gan

WIDTHS = {"dcgan": 64, "cgan": 64, "acgan": 64, "stylegan2": 32}
NUM_CLASSES = 5


def _rate(fn: Callable[[], None], batch: int, min_time: float) -> float:
    """Images per second of `fn` (which processes `batch` images)."""
    fn()
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < min_time:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - start)


def bench(name: str, size: int, batch: int, gen_batch: int, bf16: bool, min_time: float) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = GANConfig(name, size=size, channels=1, num_classes=NUM_CLASSES, width=WIDTHS[name])
    G, D = build_gan(cfg)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    z = torch.randn(batch, cfg.z_dim)
    y = (torch.rand(batch, NUM_CLASSES) < 0.3).float()
    x = torch.rand(batch, 1, size, size).mul(2).sub(1).contiguous(memory_format=fmt)

    def g_step() -> None:
        G.zero_grad(set_to_none=True)
        with ctx():
            out = G(z, y)
        out.float().mean().backward()

    def d_step() -> None:
        D.zero_grad(set_to_none=True)
        with ctx():
            logits, _ = D(x, y)
        logits.float().mean().backward()

    zg = torch.randn(gen_batch, cfg.z_dim)
    yg = (torch.rand(gen_batch, NUM_CLASSES) < 0.3).float()

    def generate() -> None:
        with torch.inference_mode(), ctx():
            G(zg, yg)

    G.train()
    D.train()
    result = {"G fwd+bwd": _rate(g_step, batch, min_time), "D fwd+bwd": _rate(d_step, batch, min_time)}
    G.eval()
    result["generate"] = _rate(generate, gen_batch, min_time)
    result["G Mparams"] = sum(p.numel() for p in G.parameters()) / 1e6
    result["D Mparams"] = sum(p.numel() for p in D.parameters()) / 1e6
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--models", default=",".join(n for n, m in MODELS.items() if m.family == "gan"))  # ddpm: bench_sampling.py
    ap.add_argument("--quick", action="store_true", help="32 px, batch 16, generation batch 64")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.gen_batch, args.min_time = 32, 16, 64, 0.2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, train batch "
          f"{args.batch}, generation batch {args.gen_batch}; images/s (higher is better)")
    header = f"{'model':<10} {'width':>5} {'mode':<10} {'G Mp':>6} {'D Mp':>6} {'G fwd+bwd':>10} " \
             f"{'D fwd+bwd':>10} {'generate':>9}"
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    for name in args.models.split(","):
        for bf16 in (False, True):
            r = bench(name, args.size, args.batch, args.gen_batch, bf16, args.min_time)
            mode = "bf16+cl" if bf16 else "fp32"
            print(f"{name:<10} {WIDTHS[name]:>5} {mode:<10} {r['G Mparams']:>6.2f} {r['D Mparams']:>6.2f} "
                  f"{r['G fwd+bwd']:>10.1f} {r['D fwd+bwd']:>10.1f} {r['generate']:>9.1f}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
