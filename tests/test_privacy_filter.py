"""Privacy filter of `generate`: calibration from held-out images, re-draws, the memorisation stop, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import medsyn.generate.core as core
from medsyn.cli.train import register
from medsyn.data.cache import PreparedDataset, prepare
from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.neighbors import knn
from medsyn.evaluate.privacy.reid import ReidConfig, save_reid, train_reid
from medsyn.generate import PrivacyFilter, export, generate
from medsyn.generate.privacy_filter import summary_line
from medsyn.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny conditional run (2 steps: its images are noise, far from every real image) and its cache."""
    tmp = tmp_path_factory.mktemp("pf")
    cache = prepare("phantom?n=240&seed=0", 16, tmp / "cache", quiet=True).path
    cfg = TrainConfig(data=str(cache), model="cgan", size=16, steps=2, batch=8, width=8, device="cpu", sample_every=100)
    return train(cfg, tmp / "cgan", quiet=True), cache


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def split(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = PreparedDataset(cache)
    held = np.sort(np.concatenate([ds.rows("val"), ds.rows("test")]))
    return np.asarray(ds.images[ds.rows("train")]), np.asarray(ds.images[held])


def copier(cache: Path, copy_fraction: float) -> Callable[..., np.ndarray]:
    """A stand-in for the generator's draw: each image is, by the seed, an exact copy of a training image
    (with probability `copy_fraction`) or a held-out real image (what a perfect, non-copying model gives)."""
    train_x, held_x = split(cache)

    def draw(G, plan, chunk, seed, dev, amp, given=None) -> tuple[np.ndarray, None]:  # noqa: ANN001 - core._draw's
        rng = np.random.default_rng(seed)
        out = held_x[rng.integers(0, len(held_x), len(chunk))]
        copies = rng.random(len(chunk)) < copy_fraction
        out[copies] = train_x[rng.integers(0, len(train_x), int(copies.sum()))]
        return out, None  # no masks: a cgan's draw

    return draw


def test_filter_records_thresholds_and_reruns_identically(tmp_path: Path, run: tuple[Path, Path]) -> None:
    folder, cache = run
    out = generate(folder, 40, tmp_path / "f", seed=3, privacy_filter=True, quiet=True)
    entry = manifest(out)["privacy_filter"]
    ds = PreparedDataset(cache)
    n_held = len(ds.rows("val")) + len(ds.rows("test"))
    assert entry["pixel"]["threshold"] > 0 and entry["pixel"]["percentile"] == 1.0
    assert entry["pixel"]["calibration_images"] == n_held and entry["pixel"]["space"] == "pixels16"
    assert entry["real_data"] == {"source": "run training data", "content_hash": ds.meta["content_hash"],
                                  "matches_training": True, "train_images": len(ds.rows("train")),
                                  "heldout_images": n_held}  # fmt: skip
    assert entry["candidates"] == 40 + entry["rejected"] and entry["rejection_rate"] == entry["rejected"] / 40
    assert entry["reid"] is None and set(entry["rejected_by"]) == {"pixel"} and entry["settings"]["max_rounds"] == 10
    assert set(entry["per_class"]) == {g["name"] for g in json.loads((folder / "run.json").read_text())["groups"]}
    assert str(cache) not in json.dumps(entry) and "patient" not in json.dumps(entry)  # nothing about the real data
    again = generate(folder, 40, tmp_path / "again", seed=3, privacy_filter=PrivacyFilter(), quiet=True)
    assert files(out) == files(again)
    # noise images pass untouched: the filtered set is the unfiltered one plus the manifest entry
    assert entry["rejected"] == 0
    plain = generate(folder, 40, tmp_path / "plain", seed=3, quiet=True)
    assert {k: v for k, v in files(out).items() if k != "manifest.json"} == {
        k: v for k, v in files(plain).items() if k != "manifest.json"
    }
    assert "privacy_filter" not in manifest(plain) and generate(folder, 40, tmp_path / "off", seed=3, quiet=True,
                                                                privacy_filter=False)  # fmt: skip
    assert files(plain) == files(tmp_path / "off")


def test_partial_copier_is_redrawn_until_every_image_passes(
    tmp_path: Path, run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = run
    monkeypatch.setattr(core, "_draw", copier(cache, 0.3))
    out = generate(folder, 60, tmp_path / "f", seed=1, batch=16, privacy_filter=True, quiet=True)
    entry = manifest(out)["privacy_filter"]
    assert 0.15 < entry["rejection_rate"] < 0.5 and entry["rounds_used"] >= 1
    assert entry["candidates"] == 60 + entry["rejected"] == 60 + entry["rejected_by"]["pixel"]
    assert sum(c["rejected"] for c in entry["per_class"].values()) >= entry["rejected"]  # multi-hot count twice
    written = np.stack([np.asarray(Image.open(p))[None] for p in sorted((out / "images").glob("*.png"))])
    d = knn(written.reshape(60, -1) / 255.0, split(cache)[0].reshape(-1, 256) / 255.0, 1).distances[:, 0]
    assert len(written) == 60 and (d >= entry["pixel"]["threshold"]).all() and (d > 0).all()
    unfiltered = generate(folder, 60, tmp_path / "u", seed=1, batch=16, quiet=True)
    assert (out / "labels.csv").read_bytes() == (unfiltered / "labels.csv").read_bytes()  # re-draws keep labels
    again = generate(folder, 60, tmp_path / "again", seed=1, batch=16, privacy_filter=True, quiet=True)
    assert files(out) == files(again)
    with pytest.raises(ConfigError, match="still rejected after 0 re-draws"):
        generate(folder, 60, tmp_path / "x", seed=1, batch=16, privacy_filter=PrivacyFilter(max_rounds=0), quiet=True)


def test_memorising_generator_stops_without_output(
    tmp_path: Path, run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = run
    monkeypatch.setattr(core, "_draw", copier(cache, 0.95))
    with pytest.raises(ConfigError, match=r"candidates \(9\d\.\d% > the 50% limit.*memorising.*do not share") as err:
        generate(folder, 30, tmp_path / "syn", privacy_filter=True, quiet=True)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no output folder, no partial folder


def test_exported_generator_needs_real_data(tmp_path: Path, run: tuple[Path, Path]) -> None:
    folder, cache = run
    shared = export(folder, tmp_path / "export")
    meta = json.loads((shared / "run.json").read_text())
    meta["config"]["data"] = str(tmp_path / "elsewhere" / "cache")  # the trainer's path, absent here
    (shared / "run.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not available here.*pass --real SPEC_OR_CACHE"):
        generate(shared, 8, tmp_path / "syn", privacy_filter=True, quiet=True)
    out = generate(shared, 8, tmp_path / "syn", privacy_filter=PrivacyFilter(real=str(cache)), quiet=True)
    real = manifest(out)["privacy_filter"]["real_data"]
    assert real["source"] == "given" and real["matches_training"] is None  # an export records no data hash


def test_cli_filter_summary_and_one_line_errors(tmp_path: Path, run: tuple[Path, Path]) -> None:
    folder, _ = run
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    runner = CliRunner()
    base = ["generate", str(folder), "--n", "8", "--quiet", "--out"]
    res = runner.invoke(app, [*base, str(tmp_path / "ok"), "--privacy-filter", "--filter-percentile", "5"])
    assert res.exit_code == 0 and "privacy filter: rejected 0 of 8 candidates" in res.output
    assert manifest(tmp_path / "ok")["privacy_filter"]["pixel"]["percentile"] == 5
    bad = {
        "percentile must be in": ["--privacy-filter", "--filter-percentile", "150"],
        "does not exist": ["--privacy-filter", "--reid-model", str(tmp_path / "no-reid")],
        "need --privacy-filter": ["--real", "phantom"],
        "max_rejection must be": ["--privacy-filter", "--max-rejection", "0"],
    }
    for message, args in bad.items():
        res = runner.invoke(app, [*base, str(tmp_path / "x"), *args])
        assert isinstance(res.exception, ConfigError) and message in str(res.exception)
        assert "\n" not in str(res.exception) and not (tmp_path / "x").exists()


def test_reid_check_rejects_linked_candidates(
    tmp_path: Path, run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = run
    ds = PreparedDataset(cache)
    rows = ds.rows("train")
    model = train_reid(np.asarray(ds.images[rows]), ds.index["patient_id"].to_numpy()[rows],
                       ReidConfig(epochs=1, steps_per_epoch=4, batch_pairs=8, embed_dim=16, augment=False))  # fmt: skip
    monkeypatch.setattr(core, "_draw", copier(cache, 0.3))
    filt = PrivacyFilter(reid_model=model, reid_fpr=0.05)
    out = generate(folder, 30, tmp_path / "f", seed=2, batch=16, privacy_filter=filt, quiet=True)
    entry = manifest(out)["privacy_filter"]
    assert entry["reid"]["fpr"] == 0.05 and len(entry["reid"]["model_sha256"]) == 64
    assert entry["reid"]["heldout_fraction_above"] <= 0.05 and entry["settings"]["reid"] is True
    assert set(entry["rejected_by"]) == {"pixel", "reid"} and entry["rejected"] >= entry["rejected_by"]["pixel"]
    assert "re-id score >" in summary_line(entry)
    save_reid(model, tmp_path / "reid")  # a saved model folder gives the same filter
    via = generate(folder, 30, tmp_path / "via", seed=2, batch=16, quiet=True,
                   privacy_filter=PrivacyFilter(reid_model=tmp_path / "reid", reid_fpr=0.05))  # fmt: skip
    assert files(via) == files(out)
