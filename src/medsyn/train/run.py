"""The run folder's description, run.json: what was trained, on which label groups, and the label statistics
generation samples from. An exported generator folder carries the same file (without local paths).

    RUN/run.json, RUN/config.yaml, RUN/losses.csv, RUN/losses.png, RUN/samples/, RUN/checkpoints/
    RUN/classes/NN-name/{checkpoints,samples,losses.csv,losses.png}   (unconditional models, per class)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsyn import __version__
from medsyn.errors import CheckpointError
from medsyn.io import write_json_atomic

RUN_FORMAT = "medsyn-run"
RUN_FORMAT_VERSION = 1
RUN_FILE = "run.json"


def write_run_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(
        folder / RUN_FILE,
        {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "medsyn_version": __version__, **meta},
    )


def read_run_meta(folder: str | Path) -> dict[str, Any]:
    """run.json of a run or export folder; CheckpointError (one line) when absent, corrupt or foreign."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a medsyn run or exported generator folder (no {RUN_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt run description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path}: not a medsyn run description")
    if meta.get("format_version") != RUN_FORMAT_VERSION or meta.get("medsyn_version") != __version__:
        raise CheckpointError(
            f"{folder}: run folder from medsyn {meta.get('medsyn_version', '?')} (format "
            f"{meta.get('format_version', '?')}); this is medsyn {__version__} "
            f"(format {RUN_FORMAT_VERSION}): "
            "use that version, or start a new run"
        )
    return meta
