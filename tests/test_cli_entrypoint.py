"""The installed `medsyn` console script as a user meets it, and the dependencies a fresh install gets.

A fresh install resolves only what pyproject.toml declares; a module that the developer's venv happens to
hold (click, once typer stopped installing it) turns every usage error into a traceback there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = Path(sys.executable).parent / "medsyn"


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package (pip install -e '.[test]') to test its entry point"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(("train",), "Missing option"), (("train", "phantom", "--no-such-option"), "No such option")],
)
def test_usage_errors_from_the_installed_script_are_a_usage_message(args: tuple[str, ...], expected: str) -> None:
    proc = _run_script(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" in proc.stderr
    assert expected in proc.stderr and "Usage:" in proc.stderr


def test_a_medsyn_error_is_one_line_with_exit_code_2() -> None:
    proc = _run_script("data", "inspect", "bogus:/x")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def _third_party_imports(root: Path) -> set[str]:
    """Top-level modules imported anywhere under `root` that are neither stdlib nor medsyn."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "medsyn"}


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {
        _normalise(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])
        for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        module: providers.get(module, ["(not installed)"])
        for module in _third_party_imports(REPO / "src" / "medsyn")
        if not declared & {_normalise(d) for d in providers.get(module, [])}
    }
    assert not undeclared, f"imported but not in pyproject.toml dependencies: {undeclared}"
