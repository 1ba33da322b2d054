"""The `medsyn` command: a thin typer layer over the package API.

User errors (`MedsynError`) print one line and exit with code 2; nothing else is caught, so bugs still
show a traceback. Usage errors (missing argument, unknown option) are typer's own: in standalone mode it
prints them with the usage line and exits 2, whichever click (vendored or not) the installed typer uses, so
this module imports nothing typer does not promise.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from medsyn import __version__
from medsyn.cli import benchmark as benchmark_cli
from medsyn.cli import data as data_cli
from medsyn.cli import demo as demo_cli
from medsyn.cli import evaluate as evaluate_cli
from medsyn.cli import reader_study as reader_study_cli
from medsyn.cli import train as train_cli
from medsyn.cli import tune as tune_cli
from medsyn.errors import MedsynError

app = typer.Typer(
    name="medsyn",
    help="Synthetic medical images that can be shared in place of patient data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_cli.register(app)
train_cli.register(app)
evaluate_cli.register(app)
demo_cli.register(app)
benchmark_cli.register(app)
reader_study_cli.register(app)
tune_cli.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"medsyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """medsyn: train, generate and evaluate synthetic medical images."""


def main() -> None:
    err = Console(stderr=True)
    try:
        app()  # standalone: typer shows usage errors and --help, and maps Ctrl-C to exit code 130
    except MedsynError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # typer versions that let it through
        sys.exit(_interrupted(err))
    except SystemExit as exc:
        if exc.code == 130:
            _interrupted(err)
        raise


def _interrupted(err: Console) -> int:
    err.print("interrupted; completed work is kept (checkpoints and caches are written atomically)", soft_wrap=True)
    return 130
