"""The masks of a synthetic set drawn by a mask model (`twostage`): where they go, masks a user supplies, and
which generators can use them.

Each image's mask is a PNG of its label values 0..8 (lossless, no metadata) at
`OUT/masks/<the image's relative path, .png>`; a csv layout's labels.csv names it in a `mask` column, which
`csv:` reads back as an image + mask set. With `generate --masks DIR` every mask file under DIR (sorted by
relative path) is read as the data layer reads masks (`medsyn.data.masks.load_mask`: binary 0/255 becomes 0/1),
scaled to the model's size by nearest neighbour (padded to a square, as `prepare` does by default) and
painted: real masks in, synthetic images out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.data.adapters.common import IMAGE_SUFFIXES
from medsyn.data.masks import fit_mask, load_mask
from medsyn.errors import ConfigError
from medsyn.models import MODELS, Generator
from medsyn.models.twostage import TwoStageGenerator

MASKS_DIR = "masks"


def mask_path(image_path: str) -> str:
    """Where the mask of the image at `image_path` (relative to the set) goes."""
    return (Path(MASKS_DIR) / Path(image_path).with_suffix(".png")).as_posix()


def read_mask_dir(folder: str | os.PathLike[str], size: int) -> np.ndarray:
    """uint8 (N, 1, size, size) label masks of every mask file under `folder`, sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--masks {root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--masks {root}: no mask files ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack([fit_mask(load_mask(p), size, "pad") for p in files])


def require_mask_model(model: str) -> None:
    """`--masks` needs a model that paints images for masks."""
    if not MODELS[model].masks:
        raise ConfigError(f"--masks paints images for given masks, which only --model twostage runs do; this is {model}")


def check_generator(G: Generator, supplied: np.ndarray | None) -> TwoStageGenerator | None:
    """The generator as a TwoStageGenerator when it draws masks (None otherwise), after checking that it can do
    what is asked: painting `supplied` masks needs Stage II and their label values, drawing needs both stages."""
    if not isinstance(G, TwoStageGenerator):
        return None
    if not bool(G.trained[1]):
        raise ConfigError("this run's Stage II (painting images) is not trained yet; train it with --stage images")
    if supplied is None and not bool(G.trained[0]):
        raise ConfigError("this run's Stage I (drawing masks) is not trained; train it with --stage masks, or paint "
                          "your own masks with --masks DIR")  # fmt: skip
    foreign = sorted(set(np.unique(supplied).tolist()) - set(G.values)) if supplied is not None else []
    if foreign:
        raise ConfigError(f"--masks: label value(s) {foreign} are not among the run's mask labels {G.values}")
    return G


def manifest_entry(G: TwoStageGenerator, supplied: bool) -> dict[str, Any]:
    """The manifest's "masks" entry: where the masks are, their label values, and whether they were drawn."""
    return {"dir": MASKS_DIR, "labels": list(G.values), "source": "supplied (--masks)" if supplied else "Stage I"}
