"""Saving and loading classifiers: safetensors + JSON, identical outputs, one-line CheckpointError on bad files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from medsyn.errors import CheckpointError, ConfigError
from medsyn.models.classifiers import (
    CLASSIFIER_FORMAT,
    build_classifier,
    load_classifier,
    save_classifier,
    save_model_folder,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _trained_like(name: str, size: int) -> torch.nn.Module:
    """A classifier with non-default batch-norm statistics, as after training."""
    torch.manual_seed(0)
    net = build_classifier(name, 1, 3, size)
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 1, size, size))
    return net.eval()


@pytest.mark.parametrize(("name", "size"), [("smallcnn", 16), ("densenet121", 32)])
def test_round_trip_gives_identical_outputs(tmp_path, name, size):
    net = _trained_like(name, size)
    folder = save_classifier(net, tmp_path / "clf", extra={"classes": ["a", "b", "c"], "note": "test"})
    assert folder == tmp_path / "clf"
    meta = json.loads((folder / "classifier.json").read_text())
    assert meta["architecture"] == {"name": name, "in_channels": 1, "num_classes": 3, "size": size}
    assert meta["classes"] == ["a", "b", "c"] and meta["format"] == CLASSIFIER_FORMAT and meta["medsyn_version"]
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    loaded = load_classifier(folder, device="cpu")
    assert torch.equal(torch.rand(3), expected_draw)  # loading does not disturb the caller's RNG stream
    x = torch.rand(4, 1, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x)) and torch.equal(loaded.features(x), net.features(x))
    assert not loaded.training and loaded.meta["classes"] == ["a", "b", "c"] and loaded.meta["note"] == "test"
    assert load_classifier(folder / "classifier.safetensors").arch == loaded.arch  # the file itself works too
    mode = 0o666 & ~_umask()
    assert all(os.stat(folder / f).st_mode & 0o777 == mode for f in ("classifier.json", "classifier.safetensors"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_line_error(folder, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_classifier(folder)
    assert "\n" not in str(info.value)


def test_missing_corrupt_and_foreign_files_are_checkpoint_errors(tmp_path):
    net = build_classifier("smallcnn", 1, 2, 16)
    _one_line_error(tmp_path / "nothing", "not found")
    folder = save_classifier(net, tmp_path / "ok")
    weights = folder / "classifier.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated download
    _one_line_error(folder, "not a readable safetensors file")
    weights.write_bytes(b"\x00" * 64)
    _one_line_error(folder, "not a readable safetensors file")
    other = build_classifier("smallcnn", 1, 4, 16)
    save_model_folder(other, tmp_path / "mismatch", "classifier", CLASSIFIER_FORMAT,
                      {"architecture": {"name": "smallcnn", "in_channels": 1, "num_classes": 2, "size": 16}})  # fmt: skip
    _one_line_error(tmp_path / "mismatch", "weights do not match")
    save_model_folder(net, tmp_path / "badarch", "classifier", CLASSIFIER_FORMAT, {"architecture": {"name": "vgg"}})
    _one_line_error(tmp_path / "badarch", "stored architecture")
    save_model_folder(net, tmp_path / "foreign", "classifier", "medsyn-reid", {})
    _one_line_error(tmp_path / "foreign", "not a medsyn-classifier file")
    folder = save_classifier(net, tmp_path / "future")
    meta = json.loads((folder / "classifier.json").read_text())
    save_model_folder(net, tmp_path / "future", "classifier", CLASSIFIER_FORMAT, {**meta, "format_version": 99})
    _one_line_error(folder, "format version 99")


def test_save_refuses_what_it_cannot_describe(tmp_path):
    net = build_classifier("smallcnn", 1, 2, 16)
    with pytest.raises(ConfigError, match="2 outputs"):
        save_classifier(net, tmp_path / "a", extra={"classes": ["only one"]})
    with pytest.raises(ConfigError, match="may not set"):
        save_classifier(net, tmp_path / "a", extra={"architecture": {}})
    with pytest.raises(ConfigError, match="JSON"):
        save_classifier(net, tmp_path / "a", extra={"x": object()})
    with pytest.raises(ConfigError, match="build_classifier"):
        save_classifier(torch.nn.Linear(2, 2), tmp_path / "a")
    with pytest.raises(ConfigError, match="device"):
        load_classifier(tmp_path / "a", device="gpu7")
    assert not (tmp_path / "a").exists()
