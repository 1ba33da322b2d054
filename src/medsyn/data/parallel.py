"""Run a per-image function over a Source in worker processes: `prepare` decodes with it, `inspect` checks.

Each worker receives the Source once (at start-up) instead of with every job; the function is a module-level
callable that reads it back with `worker_source()`. Results come back in job order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import torch

from medsyn.data.base import Source

J = TypeVar("J")
R = TypeVar("R")

_WORKER_SOURCE: Source | None = None


def _init_worker(src: Source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = src
    torch.set_num_threads(1)


def worker_source() -> Source:
    """The Source this process (a worker, or the caller itself with workers=0) was given."""
    assert _WORKER_SOURCE is not None, "worker_source() outside map_images"
    return _WORKER_SOURCE


def default_workers(n: int) -> int:
    """Processes worth starting for `n` images: none for small sets (start-up costs more), else one per
    core up to 8."""
    return 0 if n < 512 else min(8, os.cpu_count() or 1)


def map_images(src: Source, fn: Callable[[J], R], jobs: Iterable[J], workers: int) -> Iterator[R]:
    """`fn(job)` for each job, in order, in `workers` processes (0: in this process)."""
    if workers <= 0:
        _init_worker(src)
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(src,)) as pool:
        yield from pool.map(fn, jobs, chunksize=64)
