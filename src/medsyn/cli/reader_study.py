"""`medsyn reader-study create | serve | analyze`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    rs_app = typer.Typer(help="Can people tell real from synthetic images? Run a reader study.", no_args_is_help=True)
    app.add_typer(rs_app, name="reader-study")

    @rs_app.command("create")
    def create_cmd(
        real: str = typer.Option(
            ..., "--real", help="Real dataset spec or prepared cache; its held-out patients are used."
        ),
        synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic set folder written by `medsyn generate`."),
        n: int = typer.Option(100, "--n", help="Images in the study (even: half real, half synthetic)."),
        out: Path = typer.Option(..., "--out", help="Study file to write (SQLite), e.g. study.sqlite."),
        seed: int = typer.Option(0, "--seed", help="Seed of the image draw and of each reader's order."),
        by_class: bool = typer.Option(
            False, "--by-class", help="Same number of real and synthetic images per class group."
        ),
        size: int = typer.Option(
            0, "--size", help="Image size when the real set is prepared from a spec (0: the generator's)."
        ),
        cache: Path = typer.Option(None, "--cache", help="Folder for the prepared real cache."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Draw a seeded real/synthetic mix into one study file (images under random ids, no source names)."""
        from medsyn.readerstudy.create import create_study, describe

        meta = create_study(real, synthetic, out, n=n, seed=seed, by_class=by_class, size=size or None, cache=cache,
                            quiet=quiet)  # fmt: skip
        console.print(f"{out}: {describe(meta)}")
        for note in meta["notes"]:
            console.print(f"[yellow]note:[/] {note}")

    @rs_app.command("serve")
    def serve_cmd(
        study: Path = typer.Argument(..., help="Study file made by `medsyn reader-study create`."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
        port: int = typer.Option(8765, "--port", help="Port to listen on."),
        admin_token: str = typer.Option("", "--admin-token", help="Admin token (default: a random one, printed)."),
    ) -> None:
        """Serve the study to readers in a browser until Ctrl-C; prints the reader and admin addresses."""
        from medsyn.readerstudy.server import serve

        serve(study, host=host, port=port, admin_token=admin_token or None)

    @rs_app.command("analyze")
    def analyze_cmd(
        study: Path = typer.Argument(..., help="Study file."),
        out: Path = typer.Option(..., "--out", help="Folder for reader_study.json, answers.csv and report.html."),
    ) -> None:
        """Accuracy, sensitivity, specificity (exact CIs), test vs chance, ROC, Fleiss' kappa; JSON + HTML page."""
        from medsyn.readerstudy.page import analyze

        section = analyze(study, out)
        console.print(f"{out / 'report.html'}: {section['verdict']}")
