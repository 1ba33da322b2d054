"""`medsyn data inspect`: what a dataset holds and what is wrong with it, before anything is trained."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medsyn.data.adapters import open_dataset
from medsyn.data.base import Source
from medsyn.data.masks import MaskError, MaskStats, label_counts
from medsyn.data.parallel import default_workers, map_images, worker_source
from medsyn.data.spec import DatasetSpec
from medsyn.data.splits import assign_splits
from medsyn.errors import DataError
from medsyn.progress import progress_bar


def _decode_checked(i: int) -> tuple[int, int, np.ndarray | None] | tuple[str, str]:
    """(width, height, the mask's label counts or None) of image `i` after the full decode `prepare` does
    (a header can read fine while the pixels are truncated), or ('image' | 'mask', error line)."""
    try:
        image, mask = worker_source().read_with_mask(i)
    except MaskError as exc:
        return "mask", str(exc)
    except DataError as exc:
        return "image", str(exc)
    return int(image.shape[2]), int(image.shape[1]), None if mask is None else label_counts(mask)


@dataclass
class Decoded:
    """What decoding every distinct image (and its mask) found."""

    checked: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # images that cannot be decoded
    mask_errors: list[str] = field(default_factory=list)  # masks that cannot be used
    masks: MaskStats = field(default_factory=MaskStats)


def check_images(
    src: Source, sample: int | None = None, seed: int = 0, workers: int | None = None, quiet: bool = False
) -> Decoded:
    """Decode every distinct image of `src` and its mask (or a seeded random `sample` of them): sizes, the
    error line of each image or mask that cannot be used, and the masks' labels and foreground."""
    rows = np.flatnonzero(~src.table["source"].duplicated().to_numpy())
    if sample is not None and sample < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    out = Decoded(checked=len(rows))
    workers = default_workers(len(rows)) if workers is None else workers
    with progress_bar("inspect: decode images", total=len(rows), quiet=quiet) as advance:
        for result in map_images(src, _decode_checked, (int(r) for r in rows), workers):
            if isinstance(result[0], str):
                (out.mask_errors if result[0] == "mask" else out.errors).append(str(result[1]))
            else:
                w, h, counts = result
                out.sizes[(int(w), int(h))] += 1
                if counts is not None:
                    out.masks.add(counts)
            advance(1)
    return out


def inspect_dataset(
    spec: str | DatasetSpec,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    sample: int | None = None,
    workers: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Counts per class and split, patients, problems, and image sizes from decoding every image (as
    `prepare` will) or, with `sample`, a random sample of that many."""
    if sample is not None and sample < 1:
        raise DataError(f"--sample must be a positive number of images, got {sample}")
    src = open_dataset(spec)
    table = src.table.copy()
    table["split"] = assign_splits(table, src.classes, val, test, seed)
    problems: list[str] = []
    per_split: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        per_split[split] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "per_class": {
                c: {"images": int((part[c] > 0).sum()), "patients": int(part.loc[part[c] > 0, "patient_id"].nunique())}
                for c in src.classes
            },
        }
    labels = table[src.classes].to_numpy(np.float32)
    known = ~np.isnan(labels)
    positives = np.nan_to_num(labels) > 0
    negatives = (known & ~positives).sum(axis=0)
    for c, n, neg in zip(src.classes, positives.sum(axis=0), negatives, strict=True):
        if n == 0:
            problems.append(f"class {c!r} has no positive images (empty class)")
        elif neg == 0:
            problems.append(
                f"class {c!r} has no negative images (1 wherever it is known): no classifier can learn it; "
                "if it is not a finding, leave it out (csv: ?labels=A,B; prepare --classes)"
            )
        elif n < 10:
            problems.append(f"class {c!r} has only {n} positive images: too few for a per-class metric")
    unlabelled = int((~known.any(axis=1)).sum()) if src.classes else 0  # a set without labels has none to know
    if unlabelled:
        problems.append(f"{unlabelled} images have no known label (all masked): neither positive nor negative")
    no_finding = int((~positives.any(axis=1) & known.any(axis=1)).sum())
    dup = table["source"].duplicated(keep=False)
    if dup.any():
        linked = table.loc[dup].groupby("source")["patient_id"].apply(lambda s: "/".join(sorted(set(s))))
        problems.append(
            f"{int(table['source'].duplicated().sum())} image files listed more than once "
            f"(patients linked, kept on one side of every split): {', '.join(sorted(set(linked))[:5])}"
        )
    decoded = check_images(src, sample, seed, workers, quiet)
    if decoded.errors:
        problems.append(
            f"{len(decoded.errors)} of {decoded.checked} images cannot be decoded (prepare stops at the first; "
            f"--skip-bad skips them): {'; '.join(decoded.errors[:5])}"
        )
    masks = _mask_report(src, decoded, problems)
    left_out = {
        "rows_todo_left_out": "not yet labelled ('todo')",
        "rows_filtered_by_view": "other view than requested",
        "rows_not_xray": "not X-ray",
    }
    for key, why in left_out.items():
        if src.info.get(key):
            problems.append(f"{src.info[key]} rows left out: {why}")
    if src.info.get("patient_id_fallback"):
        problems.append(f"{src.info['patient_id_fallback']} images have no patient id: each counts as its own patient")
    per_patient = table.groupby("patient_id").size()
    return {
        "spec": str(spec),
        "name": src.name,
        "classes": src.classes,
        "images": len(table),
        "patients": int(table["patient_id"].nunique()),
        "images_per_patient": {"mean": float(per_patient.mean()), "max": int(per_patient.max())},
        "no_finding": no_finding,
        "negative_class": src.info["negative_class"],
        "unlabelled": unlabelled,
        "splits": per_split,
        "image_sizes": {f"{w}x{h}": n for (w, h), n in decoded.sizes.most_common(10)},
        "distinct_images": int(table["source"].nunique()),
        "images_checked": decoded.checked,
        "images_unreadable": len(decoded.errors),
        "masks": masks,
        "info": src.info,
        "problems": problems,
    }


def _mask_report(src: Source, decoded: Decoded, problems: list[str]) -> dict[str, Any] | None:
    """How many images have a mask and take part, the decoded masks' labels and foreground; adds problems."""
    counts = src.info.get("masks")
    if counts is None:
        return None
    if decoded.mask_errors:
        problems.append(
            f"{len(decoded.mask_errors)} masks cannot be used (prepare stops at the first; --skip-bad skips "
            f"their images): {'; '.join(decoded.mask_errors[:5])}"
        )
    summary = decoded.masks.summary()
    if summary["empty"]:
        problems.append(f"{summary['empty']} masks are empty (background only)")
    return {**counts, "unusable": len(decoded.mask_errors), **summary}


def mask_line(masks: dict[str, Any] | None) -> str | None:
    """One line on how many images have a mask and which of them take part (`?masks=only` or all)."""
    if masks is None:
        return None
    has, without = masks["with_mask"], masks["without_mask"]
    if masks["only"]:
        dropped = masks.get("classes_left_out")
        classes = f"; classes without a masked image left out: {', '.join(dropped)}" if dropped else ""
        return f"masks: {has} images have one and only they take part (masks=only; {without} without left out{classes})"
    if not without:
        return f"masks: all {has} images have one"
    return f"masks: {has} of {has + without} images have one; all take part (add ?masks=only for only those)"


def inspect_table(report: dict[str, Any]) -> pd.DataFrame:
    """Per-class rows (images / patients in each split) for printing."""
    rows = []
    for c in report["classes"]:
        row = {"class": c}
        for split, part in report["splits"].items():
            row[f"{split} img"] = part["per_class"][c]["images"]
            row[f"{split} pat"] = part["per_class"][c]["patients"]
        rows.append(row)
    return pd.DataFrame(rows)


def label_columns_line(info: dict[str, Any]) -> str | None:
    """One line on which columns a `csv:` source took as labels and which it left out, and why."""
    labels = info.get("labels")
    if not labels:
        return None
    line = f"labels {labels['how']}: {', '.join(labels['columns']) or 'none (an image+mask set)'}"
    if labels["how"] == "auto-detected":
        line += f" ({labels['rule']})"
    left_out = list(labels["left_out"].items())
    if left_out:
        line += "; left out: " + ", ".join(f"{c} ({why})" for c, why in left_out[:8])
        line += f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
    return line
