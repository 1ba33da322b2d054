"""Training checkpoints: the whole state of a run, written atomically, readable with `weights_only=True`.

A run folder keeps `checkpoints/last.pt` and `checkpoints/previous.pt`. A new checkpoint is first written
completely to a temporary file; only then is `last.pt` renamed to `previous.pt` and the new file renamed to
`last.pt`. A failed or killed write therefore never touches the last good checkpoint. Everything stored is
a tensor or a plain container of numbers/strings (RNG states included), so loading unpickles no code.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsyn import __version__
from medsyn.errors import CheckpointError
from medsyn.io import atomic_path
from medsyn.train.logs import notice

FORMAT = "medsyn-train-checkpoint"
FORMAT_VERSION = 1
LAST, PREVIOUS = "last.pt", "previous.pt"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states, as tensors and numbers."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def stamp(state: dict[str, Any]) -> dict[str, Any]:
    """Add the format and version fields every checkpoint carries."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "medsyn_version": __version__, **state}


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path) -> Path:
    """Write `state` to ckpt_dir/last.pt, keeping the previous last.pt as previous.pt.

    Raises CheckpointError (one line) when the write fails; the previous checkpoint is then untouched.
    """
    last, previous = ckpt_dir / LAST, ckpt_dir / PREVIOUS
    try:
        with atomic_path(last) as tmp:
            torch.save(state, tmp)
            if last.exists():
                os.replace(last, previous)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError("... file write failed") from its zip writer
        if isinstance(exc, RuntimeError) and "write" not in str(exc):
            raise
        why = "disk full" if _disk_full(exc, ckpt_dir) else (getattr(exc, "strerror", None) or "write failed")
        kept = f"the last good checkpoint {last if last.exists() else previous} is intact"
        raise CheckpointError(
            f"could not write checkpoint {last}: {why} ({' '.join(str(exc).split())[:160]}); {kept}"
        ) from None
    return last


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def checkpoint_file(ckpt_dir: Path) -> Path:
    """The newest intact checkpoint: last.pt, or previous.pt when last.pt is missing (a run killed between
    the two renames of a checkpoint write) or damaged (a disk error, a partial copy), which is said in one line.

    Intact means torch's zip container reads back with matching CRCs; that catches truncated and
    bit-flipped files without unpickling anything.
    """
    last, previous = ckpt_dir / LAST, ckpt_dir / PREVIOUS
    damage = _damage(last) if last.is_file() else None
    if last.is_file() and damage is None:
        return last
    if previous.is_file() and _damage(previous) is None:
        if damage is not None:
            notice(f"[yellow]{last} is damaged ({damage}); using the checkpoint before it, {previous}[/]")
        return previous
    if damage is not None:
        kept = " (previous.pt is damaged too)" if previous.is_file() else ""
        raise CheckpointError(f"{last}: damaged checkpoint ({damage}) and no intact previous.pt to fall back to{kept}")
    raise CheckpointError(f"{ckpt_dir}: no checkpoint (last.pt) found; is this a medsyn run folder?")


def _damage(path: Path) -> str | None:
    """Why `path` is not an intact torch checkpoint container, or None when it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return "truncated or not a torch checkpoint" if isinstance(exc, zipfile.BadZipFile | EOFError) else str(exc)
    return None if bad is None else f"corrupt data in {bad.rsplit('/', 1)[-1]}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint file (CPU tensors); any problem is a one-line CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # a damaged file can fail in the zip reader, the unpickler or torch itself
        why = _damage(path) or f"{type(exc).__name__} while reading it"
        raise CheckpointError(f"{path}: unreadable checkpoint ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medsyn training checkpoint")
    if state.get("format_version") != FORMAT_VERSION or state.get("medsyn_version") != __version__:
        raise CheckpointError(
            f"{path}: written by medsyn {state.get('medsyn_version', '?')} (checkpoint format "
            f"{state.get('format_version', '?')}); this is medsyn {__version__} (format {FORMAT_VERSION}): "
            "use that version to resume or generate, or start a new run"
        )
    return state
