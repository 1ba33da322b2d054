"""Shared fixtures: where the real sample data lives, and tiny image writers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSYN_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(2)
# --precision auto keeps its CPU timing per machine; the suite (and the CLI processes it starts) keep theirs in a
# folder of its own, so tests neither read nor write the user's ~/.cache/medsyn
os.environ.setdefault("MEDSYN_CACHE_DIR", tempfile.mkdtemp(prefix="medsyn-test-cache-"))


def needs_data(sub: str) -> pytest.MarkDecorator:
    """Skip cleanly when ../shared/data (or the named set in it) is absent, as it is outside this team."""
    return pytest.mark.skipif(not (SHARED_DATA / sub).exists(), reason=f"{SHARED_DATA / sub} not available")


def write_png(path: Path, size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m medsyn ARGS` as a user would; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "medsyn", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def one_thread():
    """Shared 2-core machine: one thread is faster than oversubscribed two for tiny models (use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
