"""Draw a synthetic set from a run (EMA generator of its last checkpoint) or an exported generator folder.

The output holds PNGs without any metadata, the labels in the source dataset's format and manifest.json
(generator hashes, settings, counts; no timestamp, so the same command twice writes identical files).
With a privacy filter (`privacy_filter.py`), candidates too close to a training image are re-drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medsyn import __version__
from medsyn.data.adapters import NO_FINDING
from medsyn.errors import CheckpointError, ConfigError, MedsynError
from medsyn.generate.layout import Layout
from medsyn.generate.masks import check_generator, manifest_entry, mask_path, read_mask_dir, require_mask_model
from medsyn.generate.plan import Plan, make_plan
from medsyn.generate.privacy_filter import PrivacyFilter, as_filter, calibrate
from medsyn.io import atomic_dir, write_json_atomic
from medsyn.models import GANConfig, Generator, load_generator, save_generator
from medsyn.models.checkpoint import WEIGHTS_NAME
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.models.registry import build_generator
from medsyn.models.twostage import TwoStageGenerator
from medsyn.progress import progress_bar
from medsyn.train.checkpoint import checkpoint_file, load_checkpoint
from medsyn.train.logs import notice
from medsyn.train.run import read_run_meta, write_run_meta
from medsyn.train.trainer import derive_seed, progress, run_progress, wants_cuda


@dataclass(frozen=True)
class GeneratorFile:
    """One generator of a run: the checkpoint or safetensors file it comes from, and its group name."""

    group: str
    path: Path

    def load(self) -> Generator:
        """The EMA generator on CPU, eval mode; loading never unpickles code."""
        if self.path.name.endswith(".safetensors"):
            return load_generator(self.path)
        ck = load_checkpoint(self.path)
        try:
            with torch.random.fork_rng(devices=[]):
                G = build_generator(GANConfig.from_dict(ck["model"]))
            G.load_state_dict(ck["G_ema"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: generator weights do not match the stored model ({exc})") from None
        return G.eval()

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()


def generator_files(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[GeneratorFile]]:
    """run.json and the generator files of a run folder or an exported generator folder."""
    root = Path(folder)
    meta = read_run_meta(root)
    dirs = [(None, ".")] if meta["conditional"] else [(g["name"], g["dir"]) for g in meta["groups"]]
    files = []
    for name, rel in dirs:
        sub = root / rel
        if (sub / "checkpoints").is_dir():
            path = checkpoint_file(sub / "checkpoints")
        elif (sub / WEIGHTS_NAME).is_file():
            path = sub / WEIGHTS_NAME
        else:
            raise CheckpointError(f"{sub}: no generator (checkpoints/last.pt or {WEIGHTS_NAME}); was it trained?")
        files.append(GeneratorFile(name or "all", path))
    return meta, files


def is_current(out: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> bool:
    """True when `out` is a finished synthetic set drawn from the generator weights now in `run_dir`, so a
    rerun may reuse it; after more training (or a missing or unreadable set) it must be drawn again."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        _, files = generator_files(run_dir)
        drawn = [g["sha256"] for g in manifest["generators"]]
    except (OSError, ValueError, KeyError, TypeError, MedsynError):
        return False
    return drawn == [f.sha256() for f in files]


def _precision(precision: str, cuda: bool, meta: dict[str, Any]) -> torch.dtype | None:
    """Autocast dtype (None: fp32). 'auto' is bf16 on a GPU that has it; on a CPU it is the precision the
    run's training chose by timing this model (run.json `runtime`), fp32 where nothing was measured."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be one of auto, fp32, bf16, fp16, got {precision!r}")
    if precision == "auto" and cuda:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    elif precision == "auto":
        runtime = meta.get("runtime") or {}
        precision = "bf16" if runtime.get("device") == "cpu" and runtime.get("precision") == "bf16" else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def training_progress(meta: dict[str, Any], files: list[GeneratorFile]) -> dict[str, Any] | None:
    """How far the generators were trained (manifest `training`): read from their checkpoints, so a killed run
    counts what it reached; for exported weights, the `progress` recorded in run.json (None if unknown)."""
    if any(not f.path.name.endswith(".pt") for f in files):
        return meta.get("progress")
    steps, limit = int(meta["config"]["steps"]), meta["config"].get("time_limit_s")
    share = None if limit is None else float(limit) / len(files)
    reached = [progress(load_checkpoint(f.path), steps, share) for f in files]
    return run_progress(reached, [f.group for f in files], bool(meta["conditional"]))


def dp_entry(training: dict[str, Any] | None) -> dict[str, Any] | None:
    """The differential-privacy record of a privately trained generator (epsilon spent, delta, settings:
    train/privacy.py), from its training progress; None when it was not trained with --dp-epsilon."""
    return (training or {}).get("privacy")


def _batches(plan: Plan, gen_index: int, batch: int) -> Iterator[np.ndarray]:
    idx = np.flatnonzero(plan.generator == gen_index)
    for start in range(0, len(idx), batch):
        yield idx[start : start + batch]


def _wait(jobs: list[Future[None]], advance: Callable[[int], None]) -> None:
    for job in jobs:
        job.result()
    advance(len(jobs))


def _save_png(path: Path, image: np.ndarray) -> None:
    """One uint8 (C, S, S) image as a PNG with no text chunks (no metadata at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image[0], "L") if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0), "RGB")
    pil.save(path, format="PNG")


def generate(
    run_dir: str | os.PathLike[str],
    n: int | None,
    out: str | os.PathLike[str],
    per_class: int | None = None,
    balance: bool = False,
    seed: int = 0,
    batch: int = 256,
    device: str = "auto",
    precision: str = "auto",
    quiet: bool = False,
    privacy_filter: PrivacyFilter | bool | None = None,
    ddim_steps: int | None = None,
    guidance: float | None = None,
    masks: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a synthetic set to `out`: `n` images with the training label distribution, or `per_class`
    images per label group, or (`balance`) each group topped up to the largest group's training count.

    `privacy_filter` (True: default settings) re-draws candidates too close to a training image; off by
    default, and then the output is exactly what it was before the filter existed. `ddim_steps` and
    `guidance` (diffusion models only; None: the model's defaults) set the DDIM step count and the
    classifier-free guidance scale; the manifest records them under 'sampling'.

    A mask model (twostage) also writes each image's mask (generate/masks.py); `masks`: a folder of mask files
    to paint one image each for (labels drawn from the training distribution) instead of drawing masks."""
    if batch < 1:
        raise ConfigError(f"batch must be positive, got {batch}")
    filt = as_filter(privacy_filter)
    if filt is not None:
        filt.validate()
    meta, files = generator_files(run_dir)
    supplied = None
    if masks is not None:
        if filt is not None or n is not None or per_class is not None or balance:
            raise ConfigError("--masks paints one image per given mask (nothing to choose or re-draw): "
                              "leave out --n, --per-class, --balance and --privacy-filter")  # fmt: skip
        require_mask_model(str(meta["model"]))
        supplied = read_mask_dir(masks, int(meta["config"]["size"]))
        n = len(supplied)
    plan = make_plan(meta, n, per_class, balance, seed)
    if supplied is not None:
        plan.notes.append(f"labels drawn from the training label distribution for the {n} given masks (seed {seed})")
    for note in plan.notes:
        notice(note)
    stats = meta["labels"]
    classes = list(stats["classes"])
    no_finding = next((g["name"] for g in meta["groups"] if not any(g["label"])), None)  # the negative group
    negative = no_finding or stats.get("negative_class") or NO_FINDING  # runs before it was recorded: NIH's name
    layout = Layout.for_source(stats["source_format"], classes, stats.get("source_options", {}), negative,
                               stats.get("source_columns"))  # fmt: skip
    cuda = wants_cuda(device)
    dev = torch.device("cuda") if cuda else torch.device("cpu")
    amp = _precision(precision, cuda, meta)
    groups = [*classes, no_finding] if no_finding else classes
    screen = None if filt is None else calibrate(filt, meta, Path(run_dir), groups, dev, quiet)
    out = Path(out)
    paths = layout.image_paths(plan.labels)
    painter: TwoStageGenerator | None = None
    with atomic_dir(out) as tmp, ThreadPoolExecutor(max_workers=4) as pool:
        title = "generate" if screen is None else "generate (privacy filter)"
        with progress_bar(title, total=len(plan), quiet=quiet) as advance:
            pending: list[Future[None]] = []  # PNG encoding of one batch overlaps drawing the next
            sampling: dict[str, Any] = {}
            for gi, file in enumerate(files):
                G = file.load().to(dev)
                painter = check_generator(G, supplied)
                sampling = _sampling(G, ddim_steps, guidance)
                for chunk in _batches(plan, gi, batch):
                    parts = (seed, gi, int(chunk[0]))
                    given = None if supplied is None else supplied[chunk]
                    images, drawn = _draw(G, plan, chunk, derive_seed(*parts), dev, amp, given)
                    if screen is not None:  # a re-drawn image comes with its re-drawn mask (written into `drawn`)
                        redraw = partial(_redraw, G, plan, chunk, parts, dev, amp, drawn)
                        images = screen.screen(images, plan.labels[chunk], redraw)
                    _wait(pending, advance)
                    pending = [pool.submit(_save_png, tmp / paths[i], images[j]) for j, i in enumerate(chunk)]
                    if drawn is not None:
                        pending += [pool.submit(_save_png, tmp / mask_path(paths[i]), drawn[j])
                                    for j, i in enumerate(chunk)]  # fmt: skip
            _wait(pending, advance)
        mask_files = [mask_path(p) for p in paths] if painter is not None else None
        layout.write_labels(tmp, out.name, paths, plan.labels, mask_files)
        extra = {} if screen is None else {"privacy_filter": screen.manifest()}
        training = training_progress(meta, files)
        dp = dp_entry(training)
        if dp and screen is not None:  # the filter picks images by their distance to training images
            dp = {**dp, "holds_for_this_set": False, "why": "--privacy-filter read the training images"}
        write_json_atomic(tmp / "manifest.json", {
            "format": "medsyn-synthetic",
            "medsyn_version": __version__,
            "model": meta["model"],
            "train_config": meta["config"],
            "generators": [{"group": f.group, "file": f.path.relative_to(Path(run_dir)).as_posix(),
                            "sha256": f.sha256()} for f in files],
            "mode": plan.mode,
            "seed": seed,
            "batch": batch,
            "device": dev.type,
            "precision": "fp32" if amp is None else str(amp).removeprefix("torch."),
            "images": len(plan),
            "counts": plan.counts(classes, no_finding),
            "negative_class": negative,
            "layout": layout.kind,
            "labels_file": layout.labels_file,
            **({"notes": plan.notes} if plan.notes else {}),
            "training": training,
            **({"differential_privacy": dp} if dp else {}),
            **({"sampling": sampling} if sampling else {}),
            **({"masks": manifest_entry(painter, supplied is not None)} if painter is not None else {}),
            **extra,
        })  # fmt: skip
    return out


def _sampling(G: Generator, ddim_steps: int | None, guidance: float | None) -> dict[str, Any]:
    """Apply the diffusion sampling options to G; {} for a GAN (which has none: asking for them is an error)."""
    if isinstance(G, DiffusionGenerator):
        return G.sampling(ddim_steps, guidance)
    if ddim_steps is not None or guidance is not None:
        raise ConfigError(f"--ddim-steps and --guidance apply to diffusion models; this is a {G.cfg.name} generator")
    return {}


@torch.no_grad()
def _draw(
    G: Generator, plan: Plan, chunk: np.ndarray, seed: int, dev: torch.device, amp: torch.dtype | None,
    given: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """uint8 images for the plan rows `chunk`, and a mask model's uint8 masks (drawn, or the `given` ones painted;
    None for other models); z and any generator noise come from `seed` alone."""
    masks = None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        z = torch.randn(len(chunk), G.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
        y = torch.from_numpy(plan.labels[chunk].astype(np.float32)).to(dev) if G.conditional else None
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            if isinstance(G, TwoStageGenerator) and given is not None:
                masks = torch.from_numpy(given).to(dev)
                x = G.paint(masks, y, z).float()
            elif isinstance(G, TwoStageGenerator):
                x, masks = G.draw(z, y)
            else:
                x = G(z, y)
    images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return images, None if masks is None else masks.cpu().numpy()


def _redraw(
    G: Generator, plan: Plan, chunk: np.ndarray, parts: tuple[int, int, int], dev: torch.device,
    amp: torch.dtype | None, drawn: np.ndarray | None, rows: np.ndarray, rnd: int,
) -> np.ndarray:  # fmt: skip
    """Re-draw the rejected candidates chunk[rows] in round `rnd`: the same labels, a seed of their own; a mask
    model's new masks replace theirs in `drawn`."""
    images, masks = _draw(G, plan, chunk[rows], derive_seed(*parts, rnd), dev, amp)
    if drawn is not None and masks is not None:
        drawn[rows] = masks
    return images


def export(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the run's EMA generator(s) as safetensors + JSON (no pickle), with the run description that
    `generate` needs; local paths and hardware details of the run are left out."""
    meta, files = generator_files(run_dir)
    out = Path(out)
    dirs = ["."] if meta["conditional"] else [g["dir"] for g in meta["groups"]]
    reached = training_progress(meta, files)
    dp = dp_entry(reached)
    with atomic_dir(out) as tmp:
        for file, rel in zip(files, dirs, strict=True):
            save_generator(file.load(), tmp / rel, {"differential_privacy": dp} if dp else None)
        keep = ("model", "conditional", "config", "groups", "labels")
        origin = [{"group": f.group, "sha256": f.sha256()} for f in files]
        trained = {"progress": reached, **({"differential_privacy": dp} if dp else {})}
        write_run_meta(tmp, {**{k: meta[k] for k in keep}, **trained, "exported_from": origin})
    return out
