"""The interface between the shared training loop (loop.py) and a model family's update rule."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from medsyn.models import Generator
from medsyn.train.distributed import DistInfo, average_gradients, broadcast_module
from medsyn.train.runtime import Runtime


class Objective(Protocol):
    """What one model family contributes to the loop (see train/gan.py and train/diffusion.py)."""

    G: Generator  # the network whose EMA is sampled and exported
    keys: list[str]  # loss terms train_step returns (losses.csv columns)
    columns: list[str]  # further losses.csv columns from `log_values`

    def train_step(self, real: torch.Tensor, labels: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """Update the networks on one batch (real in [-1, 1]); return the detached loss terms."""
        ...

    def log_values(self) -> dict[str, float]: ...

    def optimizers(self) -> list[torch.optim.Optimizer]: ...

    def state_dict(self) -> dict[str, Any]:
        """Everything of the objective a checkpoint needs besides G and its EMA (networks, optimisers...)."""
        ...

    def load_state_dict(self, ck: dict[str, Any]) -> None: ...


def optimise(
    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor, module: nn.Module, info: DistInfo
) -> None:
    """One optimiser step on `loss`, gradients averaged over the data-parallel ranks first."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    average_gradients(module.parameters(), info)
    scaler.step(opt)
    scaler.update()


def to_device(module: nn.Module, rt: Runtime, info: DistInfo) -> nn.Module:
    """Move a freshly built network to the run's device and memory format; every rank starts from rank 0's."""
    module = module.to(rt.device, memory_format=rt.memory_format)
    broadcast_module(module, info)
    return module
