"""`medsyn data prepare` and `medsyn data inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medsyn.data.cache import prepare
from medsyn.data.inspect import inspect_dataset, inspect_table, label_columns_line, mask_line
from medsyn.data.masks import describe

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Read, check and prepare datasets.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("prepare")
    def prepare_cmd(
        spec: str = typer.Argument(..., help="Dataset spec, e.g. nih:/data/cxr14, medmnist:file.npz, phantom?n=2000"),
        size: int = typer.Option(64, "--size", help="Square output size in px."),
        out: Path = typer.Option(..., "--out", help="Cache folder to write."),
        fit: str = typer.Option("pad", help="Keep aspect ratio by 'pad' (black borders) or 'crop' (centre)."),
        val: float = typer.Option(0.1, help="Validation fraction (of patients)."),
        test: float = typer.Option(
            0.2, help="Test fraction (of patients), unless the data has an official test split."
        ),
        seed: int = typer.Option(0, help="Split and cap seed."),
        classes: str = typer.Option("", help="Comma-separated subset of classes to keep."),
        normal: str = typer.Option("", help="Add an explicit normal class with this name (e.g. 'No Finding')."),
        cap: int = typer.Option(0, help="At most this many training images per class (0 = no cap)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count corrupt images instead of stopping."),
        workers: int = typer.Option(-1, help="Decoding processes (-1 = automatic, 0 = none)."),
        force: bool = typer.Option(False, "--force", help="Replace a cache prepared with other settings."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Decode and resize once into a memory-mapped cache (images.npy + index.csv + meta.json)."""
        ds = prepare(
            spec, size, out, fit=fit, val=val, test=test, seed=seed,
            classes=[c.strip() for c in classes.split(",") if c.strip()] or None,
            normal=normal or None, cap=cap or None, skip_bad=skip_bad,
            workers=None if workers < 0 else workers, force=force, quiet=quiet,
        )  # fmt: skip
        counts = ds.meta["counts"]
        parts = ", ".join(
            f"{s} {counts[s]['images']} images / {counts[s]['patients']} patients" for s in ("train", "val", "test")
        )
        console.print(f"{ds.path}: {len(ds)} images at {ds.size}px, {len(ds.classes)} classes ({parts})")
        if line := label_columns_line(ds.meta["source_info"]):
            console.print(line, highlight=False)
        if "masks" in ds.meta:
            console.print(f"masks.npy: {len(ds.mask_rows())} masks, {describe(ds.meta['masks'])}", highlight=False)
        if ds.meta["skipped"]["count"]:
            console.print(f"[yellow]skipped {ds.meta['skipped']['count']} unreadable images (listed in meta.json)")

    @data_app.command("inspect")
    def inspect_cmd(
        spec: str = typer.Argument(..., help="Dataset spec."),
        seed: int = typer.Option(0, help="Split seed (as for prepare)."),
        val: float = typer.Option(0.1, help="Validation fraction."),
        test: float = typer.Option(0.2, help="Test fraction."),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
        sample: int = typer.Option(
            0, "--sample", help="Decode only this many randomly chosen images (0 = every image, as prepare does)."
        ),
        workers: int = typer.Option(-1, help="Decoding processes (-1 = automatic, 0 = none)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Images and patients per class and split, image sizes and problems found (every image is decoded)."""
        report = inspect_dataset(
            spec, val=val, test=test, seed=seed, sample=sample or None,
            workers=None if workers < 0 else workers, quiet=quiet or as_json,
        )  # fmt: skip
        if as_json:
            print(json.dumps(report, indent=2, default=str))
            return
        negatives = (
            f"{report['no_finding']} {report['negative_class']} (no positive label)" if report["classes"]
            else "no labels (an image+mask set)"
        )  # fmt: skip
        console.print(
            f"[bold]{report['name']}[/] {report['spec']}: {report['images']} images, {report['patients']} patients "
            f"({report['images_per_patient']['mean']:.1f} images per patient, max {report['images_per_patient']['max']}), "
            f"{negatives}"
        )
        if line := label_columns_line(report["info"]):
            console.print(line, highlight=False)
        if line := mask_line(report["masks"]):
            console.print(f"{line}; {describe(report['masks'])}", highlight=False)
        if report["classes"]:
            _print_class_table(report)
        for split, part in report["splits"].items():
            console.print(f"{split}: {part['images']} images, {part['patients']} patients")
        sizes = ", ".join(f"{k} ({v})" for k, v in report["image_sizes"].items())
        checked, distinct = report["images_checked"], report["distinct_images"]
        how = (
            f"all {checked} images decoded" if checked == distinct
            else f"only a random sample of {checked} of {distinct} images decoded; without --sample all are"
        )  # fmt: skip
        if report["images_unreadable"]:
            how += f", {report['images_unreadable']} unreadable"
        console.print(f"image sizes ({how}): {sizes or 'n/a'}")
        if report["problems"]:
            console.print("[yellow]problems:")
            for p in report["problems"]:
                console.print(f"  - {p}", highlight=False)
        else:
            console.print("[green]no problems found")


def _print_class_table(report: dict) -> None:
    table = Table(title="positives per class and split (images / patients)")
    frame = inspect_table(report)
    for col in frame.columns:  # nothing is cut: a narrow terminal wraps the lines instead
        header = col.replace(" ", "\n")  # "train\nimg": two short header lines
        width = max(len(w) for w in [*header.split("\n"), *map(str, frame[col])])
        table.add_column(header, justify="left" if col == "class" else "right", no_wrap=True, min_width=width)
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)
