"""Data-parallel training: two CPU processes (gloo) end with identical weights; only rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from medsyn.data.cache import prepare
from medsyn.train import TrainConfig, Trainer, train
from medsyn.train.checkpoint import load_checkpoint

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg: TrainConfig, out: Path, dump: Path) -> None:
    """What torchrun sets up, then a normal `train` call; each rank dumps its final weights for the test."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    fit = Trainer.fit

    def fit_and_dump(self: Trainer, *args: object, **kw: object) -> dict:
        result = fit(self, *args, **kw)
        nets = {"G": self.G, "G_ema": self.G_ema, **({"D": self.objective.D} if hasattr(self.objective, "D") else {})}
        state = {f"{name}.{k}": v for name, m in nets.items() for k, v in m.state_dict().items()}
        torch.save({"weights": state, "rows": self.rows.tolist()}, dump / f"rank{rank}.pt")
        return result

    Trainer.fit = fit_and_dump  # type: ignore[method-assign]
    train(cfg, out, quiet=True)


@pytest.mark.parametrize("model", ["stylegan2", "ddpm", "ldm"])
def test_two_gloo_ranks_end_identical(tmp_path: Path, model: str) -> None:
    cache = prepare("phantom?n=64&seed=0", 16, tmp_path / "cache", quiet=True).path
    extra = (
        {"r1_every": 2, "augment": "diffaugment"}
        if model == "stylegan2"
        else {"model_extra": {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}}
    )
    if model == "ldm":  # both stages data-parallel: the autoencoder's 2 steps, then the denoiser's 3
        extra = {"model_extra": {"res_blocks": 1, "ddim_steps": 2, "ae_steps": 2}}
    cfg = TrainConfig(data=str(cache), model=model, size=16, steps=3, batch=4, width=8, device="cpu",
                      ckpt_every=2, log_every=1, sample_every=100, **extra)  # fmt: skip
    # fork: the ranks inherit the imported modules instead of importing torch and medsyn again (seconds each)
    mp.start_processes(_worker, args=(_free_port(), cfg, tmp_path / "run", tmp_path), nprocs=WORLD,
                       start_method="fork")  # fmt: skip
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["weights"].keys() == r1["weights"].keys()
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["world"] == WORLD and len(ck["rng"]) == WORLD and ck["images_seen"] == 3 * 4 * WORLD
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # ranks draw different noise
    first = next(iter(ck["G"]))
    assert torch.equal(ck["G"][first], r0["weights"][f"G.{first}"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_sharded_sampler_splits_the_data() -> None:
    from medsyn.train.data import ShardedBatches
    from medsyn.train.distributed import DistInfo

    streams = [ShardedBatches(10, 5, DistInfo(rank=r, world=2), seed=0) for r in range(2)]
    first = [next(iter(s)) for s in streams]
    assert sorted(first[0] + first[1]) == list(range(10))  # one epoch, split between the ranks
    resumed = ShardedBatches(10, 5, DistInfo(rank=1, world=2), seed=0, start=5)
    it = iter(streams[1])
    next(it)
    assert next(iter(resumed)) == next(it)  # a resumed stream continues where it stopped
