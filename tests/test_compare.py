"""`medsyn benchmark --compare`: every model trained on one split for the same budget, one table, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from medsyn.benchmark.compare import CompareConfig, run_compare
from medsyn.data.cache import prepare
from medsyn.errors import ConfigError

SMOKE_EVAL = {"classifier": {"epochs": 1, "patience": 1, "batch_size": 32}, "utility": {"n_bootstrap": 20},
              "kid_subsets": 5}  # fmt: skip
DDPM_TINY = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}
LDM_TINY = {"res_blocks": 1, "ddim_steps": 2}


def test_compare_trains_each_model_for_the_budget_and_tabulates(tmp_path: Path) -> None:
    cache = prepare("phantom?n=240&seed=0", 16, tmp_path / "cache", quiet=True).path
    cfg = CompareConfig(data=str(cache), models=["cgan", "ddpm", "ldm"], budget_s=1.0, size=16, width=8, batch=16,
                        model_extra={"ddpm": DDPM_TINY, "ldm": LDM_TINY}, ddim_steps=2, guidance=1.5,
                        settings=SMOKE_EVAL)  # fmt: skip
    summary = run_compare(cfg, tmp_path / "cmp", quiet=True)
    by_model = {r["model"]: r for r in summary["models"]}
    assert list(by_model) == ["cgan", "ddpm", "ldm"] and by_model["ddpm"]["family"] == "diffusion"
    assert [s["stage"] for s in by_model["ldm"]["progress"]["stages"]] == ["autoencoder", "denoiser"]
    assert by_model["ldm"]["reconstructions"] and by_model["ddpm"]["reconstructions"] is None
    for r in by_model.values():
        assert r["progress"]["stop_reason"] == "time-limit" and r["progress"]["train_seconds"] >= 1.0
        assert r["generate"]["images"] == json.loads((cache / "meta.json").read_text())["counts"]["train"]["images"]
        assert r["summary"]["ratio"][0] is not None and r["summary"]["privacy_checks"]
    assert by_model["ddpm"]["generate"]["sampling"] == {"sampler": "ddim", "ddim_steps": 2, "eta": 0.0,
                                                        "guidance": 1.5}  # fmt: skip
    assert by_model["cgan"]["generate"]["sampling"] is None
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.count("\n") == 5 and all(f"| {m} |" in table for m in by_model)
    page = (tmp_path / "cmp" / "compare.html").read_text()
    for m, r in by_model.items():  # a row per model, its sample grid embedded, every privacy check a column
        assert f"<td><b>{m}</b>" in page and f'alt="{m} samples" src="data:image/png;base64,' in page
        assert all(f"<th>{c['check']}</th>" in page for c in r["summary"]["privacy_checks"])
    assert 'alt="ldm reconstructions"' in page and str(tmp_path) not in page  # no local paths on the page
    before = (tmp_path / "cmp" / "ddpm" / "result.json").stat().st_mtime_ns
    run_compare(cfg, tmp_path / "cmp", quiet=True)  # finished models are kept, not retrained
    assert (tmp_path / "cmp" / "ddpm" / "result.json").stat().st_mtime_ns == before


def test_compare_config_and_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model names"):
        run_compare(CompareConfig(data="phantom", models=["vqgan"], budget_s=1), tmp_path)
    with pytest.raises(ConfigError, match="twice"):
        run_compare(CompareConfig(data="phantom", models=["ddpm", "ddpm"], budget_s=1), tmp_path)
    r = run_cli("benchmark", "--data", "phantom", "--compare", "cgan,ddpm", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--budget" in r.stderr
    r = run_cli("benchmark", "--data", "phantom", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "either --sweep" in r.stderr
