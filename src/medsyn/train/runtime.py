"""Small pieces every training module shares: where the run computes (`Runtime`) and seed derivation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (run seed, group, rank, ...), without collisions like a+b."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes: resolved from the config's 'auto' settings on this machine."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    workers: int
    precision_probe: Mapping[str, Any] | None = None  # the timing behind an 'auto' choice on CPU

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "workers": self.workers,
            **({"precision_probe": dict(self.precision_probe)} if self.precision_probe else {}),
        }
