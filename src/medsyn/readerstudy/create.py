"""`medsyn reader-study create`: a seeded, stratified mix of real and synthetic images in one study file.

Real images are the HELD-OUT patients (validation + test split) of medsyn's prepared cache, never the
training images: a generator may have memorised its training images, and showing one would let a reader
"recognise" a real image as the synthetic copy (or vice versa). The cache is prepared (or reused) exactly
as `medsyn evaluate` does it, with the generator's own split seed when the synthetic manifest names it.
Synthetic images are decoded by evaluate's synthetic-set loader at the real cache's size and channels, so
both halves go through the same PNG encoder: size, format and metadata give nothing away.

Half of the images are real and half synthetic. With `by_class`, both halves hold the same number of
images of each class group (`A`, `A+B`, or the negative group), spread as evenly over the groups as the
images allow; otherwise each half is a plain seeded draw from its pool.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsyn.errors import ConfigError
from medsyn.evaluate.real import open_real
from medsyn.evaluate.synthetic import load_synthetic, open_synthetic
from medsyn.readerstudy.store import StudyImage, write_study


def groups_of(labels: np.ndarray, classes: list[str], negative: str) -> np.ndarray:
    """Class group of each row: its positive classes joined by '+', or `negative` when it has none."""
    names = ["+".join(c for c, v in zip(classes, row, strict=True) if v == 1) or negative for row in labels]
    return np.asarray(names, dtype=object)


def allocate(available: dict[str, int], total: int) -> dict[str, int]:
    """Spread `total` over groups as evenly as their `available` counts allow (water-filling); raises
    ConfigError when the groups together hold fewer than `total`."""
    if sum(available.values()) < total:
        raise ConfigError(
            f"only {sum(available.values())} images per half in the class groups both sets share "
            f"({', '.join(f'{g} {k}' for g, k in sorted(available.items()))}); ask for --n {2 * sum(available.values())} or fewer"
        )
    quota = dict.fromkeys(available, 0)
    left = total
    while left:
        open_groups = sorted((g for g in available if quota[g] < available[g]), key=lambda g: (quota[g], g))
        for g in open_groups[:left]:
            quota[g] += 1
            left -= 1
    return {g: k for g, k in quota.items() if k}


def _draw(
    rng: np.random.Generator, pool: np.ndarray, groups: np.ndarray, quota: dict[str, int] | None, k: int
) -> np.ndarray:
    """Indices into `pool`: `k` at random, or `quota[g]` at random from each group g."""
    if quota is None:
        return rng.choice(len(pool), k, replace=False)
    picked = [rng.choice(np.flatnonzero(groups == g), q, replace=False) for g, q in sorted(quota.items())]
    return np.concatenate(picked)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) -> PNG with no text chunks (PIL writes none unless asked): pixels only."""
    arr = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def create_study(
    real: str | Path, synthetic: str | Path, out: str | Path, *, n: int = 100, seed: int = 0, by_class: bool = False,
    size: int | None = None, cache: str | Path | None = None, quiet: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Write the study file `out`; returns its summary (what the CLI prints and the meta table stores)."""
    if n < 2 or n % 2:
        raise ConfigError(f"--n must be an even number of at least 2 (half real, half synthetic), got {n}")
    out = Path(out)
    opened = open_synthetic(synthetic)
    ds, notes = open_real(str(real), size, cache, opened.train_config, opened.native_size, out, quiet)
    syn = load_synthetic(opened, ds.classes, ds.size, ds.channels, known=ds.classes, quiet=quiet)
    negative = opened.negative_class
    held = np.concatenate([ds.rows("val"), ds.rows("test")])
    real_groups = groups_of(np.nan_to_num(ds.labels[held]), ds.classes, negative)
    syn_groups = groups_of(np.nan_to_num(syn.labels), ds.classes, negative)
    half = n // 2
    quota = None
    if by_class:
        shared = sorted(set(real_groups) & set(syn_groups))
        left_out = sorted(set(real_groups) ^ set(syn_groups))
        if left_out:
            notes.append(f"class groups in only one of the sets are left out: {', '.join(left_out)}")
        available = {g: int(min((real_groups == g).sum(), (syn_groups == g).sum())) for g in shared}
        quota = allocate(available, half)
    else:
        for name, pool in (("real held-out", held), ("synthetic", syn_groups)):
            if len(pool) < half:
                raise ConfigError(
                    f"only {len(pool)} {name} images for {half} per half; ask for --n {2 * len(pool)} or fewer"
                )
    rng = np.random.default_rng(seed)
    real_pick = held[_draw(rng, held, real_groups, quota, half)]
    syn_pick = _draw(rng, syn_groups, syn_groups, quota, half)
    classes = ds.classes

    def labels(row: np.ndarray) -> dict[str, float]:
        return {c: float(v) for c, v in zip(classes, row, strict=True) if not np.isnan(v)}

    images = [StudyImage(png_bytes(np.asarray(ds.images[r])), "real", groups_of(ds.labels[[r]], classes, negative)[0],
                         labels(ds.labels[r])) for r in sorted(real_pick)]  # fmt: skip
    images += [StudyImage(png_bytes(np.asarray(syn.images[i])), "synthetic", syn_groups[i], labels(syn.labels[i]))
               for i in sorted(syn_pick)]  # fmt: skip
    groups = sorted({im.group for im in images})
    meta = {
        "seed": seed, "n": n, "by_class": by_class, "size": ds.size, "channels": ds.channels, "classes": classes,
        "negative_class": negative, "groups": groups,
        "real": {"spec": ds.spec, "images_from": "held-out patients (validation + test split), never training images",
                 "held_out_images": len(held)},
        "synthetic": {"location": syn.location, "kind": syn.kind, "images": len(syn)},
        "per_group": {g: {t: sum(im.group == g and im.truth == t for im in images) for t in ("real", "synthetic")}
                      for g in groups},
        "notes": notes + syn.notes,
    }  # fmt: skip
    write_study(out, images, meta, seed)
    return meta


def describe(meta: dict[str, Any]) -> str:
    """One line for the CLI."""
    return (f"{meta['n']} images ({meta['n'] // 2} real held-out, {meta['n'] // 2} synthetic) at {meta['size']} px, "
            f"groups: {', '.join(meta['groups'])}")  # fmt: skip
