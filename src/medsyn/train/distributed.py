"""Data-parallel training under torchrun: NCCL on GPUs, gloo on CPUs.

Gradients are averaged with one flat all-reduce per optimiser step instead of wrapping the models in
DistributedDataParallel, as StyleGAN2-ADA does: a GAN step runs D several times before one backward
(real, fake, G's step), and R1 / WGAN-GP penalties differentiate D's output with `autograd.grad`, which
DDP's gradient hooks do not support. Floating buffers (BatchNorm statistics, StyleGAN2's w_avg) are averaged
after every step, so all ranks hold identical weights. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when medsyn created the process group (and must destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the process group torchrun describes in the environment (or one the caller already created)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def _flat_collective(tensors: list[torch.Tensor], op: str, world: int) -> None:
    """Broadcast from rank 0 ('broadcast') or average ('average') `tensors` in one call per dtype."""
    for dtype in sorted({t.dtype for t in tensors}, key=str):  # same order on every rank (no hash order)
        group = [t for t in tensors if t.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        if op == "broadcast":
            dist.broadcast(flat, src=0)
        else:
            dist.all_reduce(flat)
            flat.div_(world)
        for t, new in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            t.copy_(new)


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if info.active:
        with torch.no_grad():
            _flat_collective([*module.parameters(), *module.buffers()], "broadcast", info.world)


def average_gradients(params: Iterable[nn.Parameter], info: DistInfo) -> None:
    """All-reduce and average the gradients of `params` (one flat buffer per dtype)."""
    if info.active:
        _flat_collective([p.grad for p in params if p.grad is not None], "average", info.world)


def average_buffers(modules: Iterable[nn.Module], info: DistInfo) -> None:
    """Average floating-point buffers (running statistics) across ranks."""
    if info.active:
        _flat_collective([b for m in modules for b in m.buffers() if b.is_floating_point()], "average", info.world)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (a copy; `t` itself is unchanged)."""
    t = t.clone()
    if info.active:
        dist.all_reduce(t)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (used for per-rank RNG states in checkpoints)."""
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
