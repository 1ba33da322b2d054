"""Generator checkpoints that can be shared: safetensors weights (no pickle) + the config needed to rebuild.

The config travels inside the safetensors metadata, so the .safetensors file alone is enough to load; the
generator.json beside it is a human-readable copy of the same metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from medsyn import __version__
from medsyn.errors import CheckpointError, MedsynError
from medsyn.io import atomic_path, write_json_atomic
from medsyn.models.base import Generator
from medsyn.models.config import GANConfig
from medsyn.models.registry import build_generator

FORMAT = "medsyn-generator"
FORMAT_VERSION = 1
WEIGHTS_NAME = "generator.safetensors"
META_NAME = "generator.json"


def save_generator(G: Generator, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Write out_dir/generator.safetensors and out_dir/generator.json, each atomically. `extra`: further
    JSON-ready entries for both (e.g. `differential_privacy`: how privately the weights were trained)."""
    G = getattr(G, "_orig_mod", G)  # unwrap torch.compile
    out = Path(out_dir)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medsyn_version": __version__,
        "config": G.cfg.to_dict(),
        **(extra or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in G.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"medsyn": json.dumps(meta, sort_keys=True)})
    write_json_atomic(out / META_NAME, meta)


def _read(file: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            raw = (fh.metadata() or {}).get("medsyn")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
    if raw is None:
        raise CheckpointError(f"{file}: no medsyn metadata; not a generator saved by medsyn")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: corrupt medsyn metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a medsyn generator checkpoint")
    return meta, tensors


def load_generator(path: str | os.PathLike[str]) -> Generator:
    """Load a generator (eval mode, CPU) from a run folder or a .safetensors file; never unpickles."""
    p = Path(path)
    file = p / WEIGHTS_NAME if p.is_dir() else (p.with_suffix(".safetensors") if p.suffix == ".json" else p)
    if not file.is_file():
        raise CheckpointError(f"{file}: generator checkpoint not found")
    meta, tensors = _read(file)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: generator format version {version!r} (medsyn {meta.get('medsyn_version', '?')}) "
            f"is not readable by medsyn {__version__}, which reads version {FORMAT_VERSION}"
        )
    try:
        cfg = GANConfig.from_dict(meta.get("config"))
        with torch.random.fork_rng(devices=[]):  # loading must not disturb the caller's seeded RNG stream
            G = build_generator(cfg)
    except (MedsynError, TypeError) as e:
        raise CheckpointError(f"{file}: stored model config is invalid ({e})") from e
    try:
        G.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        why = " ".join(str(e).strip().splitlines()[:2])
        raise CheckpointError(f"{file}: weights do not match the stored config ({why})") from e
    return G.eval()
