"""`--precision auto` on a CPU: time the run's own model in fp32 and in bf16 + channels_last, keep the faster.

CPU flags do not predict it: one 2-core AMD EPYC machine of this project trained a 64 px DCGAN 2.4x faster in
bf16 + channels_last than in fp32 (benchmarks/bench_train.py prints both), another (no avx512 flags) 16x slower,
where oneDNN emulates bf16; tiny models lose to the conversion overhead everywhere. So the choice is a
measurement: a few interleaved training-like passes on a small batch before training starts; bf16 is taken only
when it is clearly faster. It is recorded in run.json (`runtime.precision_probe`) and a resumed run keeps it, so
one run never mixes precisions.

The result is also kept per machine (CPU model, torch version, model config, probe batch) in
`$MEDSYN_CACHE_DIR` (default `~/.cache/medsyn`) `/precision.json`, so the same command run twice on one machine
takes the same precision and gives the same files, and does not pay for the probe again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from medsyn.io import write_json_atomic
from medsyn.models import GANConfig, build_gan
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.registry import build_generator, has_discriminator

PROBE_BATCH = 8  # enough to separate the two (they differ by 2x or more where it matters), cheap at any size
PROBE_REPEATS = 3
BF16_MARGIN = 1.25  # bf16 costs precision, so it must be clearly faster, which also keeps near-ties on fp32
CLEAR_GAP = 3.0  # a round in which one side is this much slower than the other decides at once


def _pass(nets: tuple[torch.nn.Module, ...], y: torch.Tensor | None, n: int, bf16: bool) -> float:
    """CPU seconds for one training-like pass (process CPU time, not wall time, so that other jobs on a shared
    machine do not decide the comparison): a GAN's generator forward + discriminator forward + backward
    through both, a diffusion model's denoising loss + backward, or (twostage, whose discriminators belong to its
    training stages) the generator's forward + backward."""
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    G = nets[0]
    start = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if isinstance(G, DiffusionGenerator):
            x0 = torch.zeros(n, G.cfg.channels, G.cfg.size, G.cfg.size).contiguous(memory_format=fmt)
            out = G.loss(x0, y)
        else:
            x = G(torch.randn(n, G.z_dim), y).contiguous(memory_format=fmt)
            out = nets[1](x, y)[0] if len(nets) > 1 else x
    out.float().mean().backward()
    return time.process_time() - start


def probe_cpu_precision(model: GANConfig, batch: int) -> dict[str, Any]:
    """Median CPU seconds per pass in fp32 and in bf16 + channels_last, and the precision to train in.

    Runs on copies of freshly built networks under a forked RNG, so the run's own weights and random
    streams are untouched.
    """
    if not torch.backends.mkldnn.is_available():
        return {"choice": "fp32", "reason": "this torch build has no oneDNN (mkldnn), so no CPU bf16"}
    n = max(1, min(batch, PROBE_BATCH))
    key = _machine_key(model, n)
    known = _read_cache().get(key)
    if isinstance(known, dict) and known.get("choice") in ("fp32", "bf16"):
        return {**known, "cached": str(cache_file())}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the kernels' relative speed without OpenMP spin-waits, which
    try:  # inflate CPU time when other jobs share the cores
        result = _probe(model, n)
    finally:
        torch.set_num_threads(threads)
    with suppress(OSError):  # a read-only home: the run still has its measurement, only the next one re-measures
        write_json_atomic(cache_file(), {**_read_cache(), key: result})
    return result


def cache_file() -> Path:
    root = (
        os.environ.get("MEDSYN_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medsyn"
    )
    return Path(root) / "precision.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _machine_key(model: GANConfig, n: int) -> str:
    """What the timing depends on: this CPU, this torch, the model's configuration and the probe batch."""
    cpu = platform.processor() or platform.machine()
    with suppress(OSError, StopIteration):  # Linux names the CPU model; elsewhere the platform's word stands
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    what = json.dumps([cpu, torch.__version__, model.to_dict(), n], sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def _probe(model: GANConfig, n: int) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = {
            "fp32": _build(model),
            "bf16": tuple(m.to(memory_format=torch.channels_last) for m in _build(model)),
        }
        y = torch.randint(0, 2, (n, model.num_classes)).float() if model.num_classes else None
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for i in range(PROBE_REPEATS + 1):  # round 0 warms up oneDNN's kernel caches and is not counted
            last = {name: _pass(pair, y, n, bf16=name == "bf16") for name, pair in nets.items()}
            if i == 0:
                continue
            for name, t in last.items():
                times[name].append(t)
            if max(last.values()) > CLEAR_GAP * min(last.values()):  # one clear round settles it
                break
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "choice": "bf16" if seconds["bf16"] * BF16_MARGIN < seconds["fp32"] else "fp32",
        "fp32_s": round(seconds["fp32"], 5),
        "bf16_s": round(seconds["bf16"], 5),
        "batch": n,
    }


def _build(model: GANConfig) -> tuple[torch.nn.Module, ...]:
    """The networks a training step runs: (G, D) for a GAN, (denoiser,) for a diffusion model, (G,) for twostage."""
    return build_gan(model) if has_discriminator(model.name) else (build_generator(model),)
