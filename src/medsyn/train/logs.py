"""What a run shows and leaves behind: the progress bar, losses.csv, losses.png and sample grids."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medsyn.io import atomic_path

console = Console(stderr=True, highlight=False)


def notice(message: str) -> None:
    """A message the user should see even with --quiet (rollbacks, resumes)."""
    console.print(message, soft_wrap=True)


class LossLog:
    """losses.csv: one row every `log_every` steps; a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = path, ["step", "images", *columns]

    def truncate(self, step: int) -> None:
        """Keep the header and complete rows up to `step` (a killed run may have logged past it)."""
        kept: list[list[str]] = []
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
            if rows and rows[0] == self.columns:
                kept = [r for r in rows[1:] if len(r) == len(self.columns) and r[0].isdigit() and int(r[0]) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            writer.writerows(kept)

    def append(self, step: int, images: int, values: dict[str, float]) -> None:
        row = [str(step), str(images)] + [_fmt(values.get(c, math.nan)) for c in self.columns[2:]]
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)

    def plot(self, out: Path) -> None:
        """losses.png (matplotlib's Agg canvas directly, so the caller's pyplot backend is untouched)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            return
        steps = np.array([int(r["step"]) for r in rows])
        loss_cols = [c for c in self.columns[2:] if c not in ("img_per_s", "aug_p", "epsilon")]
        fig = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for c in loss_cols:
            ys = np.array([float(r[c]) if r[c] else np.nan for r in rows])
            if np.isfinite(ys).any():
                ax.plot(steps, ys, label=c, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.lines:  # none when every logged loss is NaN (e.g. a private run's empty Poisson batches)
            ax.legend(loc="upper left", fontsize=8)
        if "aug_p" in self.columns:
            p = np.array([float(r["aug_p"]) if r["aug_p"] else np.nan for r in rows])
            if np.nanmax(p, initial=0.0) > 0:
                ax2 = ax.twinx()
                ax2.plot(steps, p, color="grey", linestyle="--", linewidth=1, label="aug p")
                ax2.set_ylabel("augmentation p")
                ax2.set_ylim(0, 1)
        fig.tight_layout()
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.6g}"


def save_grid(images: torch.Tensor, row_names: Sequence[str], path: Path) -> None:
    """Save (R*C, ch, S, S) images in [-1, 1] as an R-row grid with each row's name on the left."""
    rows = len(row_names)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, ch, s, _ = x.shape
    cols = n // rows
    scale = max(1, 64 // s)  # small images (28 px) are enlarged so the grid is legible
    tile = s * scale
    grid = x.reshape(rows, cols, ch, s, s).permute(0, 3, 1, 4, 2).reshape(rows * s, cols * s, ch).numpy()
    img = Image.fromarray(grid[..., 0] if ch == 1 else grid, "L" if ch == 1 else "RGB")
    img = img.resize((cols * tile, rows * tile), Image.NEAREST)
    margin = 8 + 6 * max(len(r) for r in row_names)
    canvas = Image.new(img.mode, (margin + img.width, img.height), 255 if ch == 1 else (255, 255, 255))
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(row_names):
        draw.text((4, i * tile + tile // 2 - 5), name, fill=0 if ch == 1 else (0, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


class StepProgress:
    """A rich bar: step, losses, img/s and ETA; silent when quiet or on ranks other than 0."""

    def __init__(self, progress: Progress | None, task: int) -> None:
        self._progress, self._task = progress, task

    def update(self, step: int, info: str | None = None) -> None:
        if self._progress is not None:
            fields = {"info": info} if info is not None else {}
            self._progress.update(self._task, completed=step, **fields)


@contextmanager
def step_progress(description: str, total: int, start: int, enabled: bool) -> Iterator[StepProgress]:
    if not enabled:
        yield StepProgress(None, 0)
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=start, info="")
        yield StepProgress(progress, task)
