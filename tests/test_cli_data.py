"""The data CLI as a user runs it: results on success; one line and exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from conftest import SHARED_DATA, needs_data, run_cli, write_png
from medsyn.data.inspect import inspect_dataset


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("error:"), proc.stderr
    for f in fragments:
        assert f in text, (f, proc.stderr)


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    assert_one_line_error(run_cli("data", "inspect", f"nih:{tmp_path / 'missing'}"), "not found")
    assert_one_line_error(run_cli("data", "inspect", "bogus:/x"), "unknown dataset spec")
    missing_cache = str(tmp_path / "no" / "such" / "cache")
    assert_one_line_error(run_cli("train", missing_cache, "--out", str(tmp_path / "run")), "no such file or folder")
    pd.DataFrame({"Image Index": ["a.png"]}).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    assert_one_line_error(run_cli("data", "inspect", f"nih:{tmp_path}"), "Finding Labels")
    write_png(tmp_path / "f" / "a" / "1.png")
    (tmp_path / "f" / "b").mkdir()
    assert_one_line_error(
        run_cli("data", "prepare", f"folder:{tmp_path / 'f'}", "--out", str(tmp_path / "c")), "empty class"
    )


def test_corrupt_image_fatal_then_skipped(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / "f" / cls / f"{i}.png", seed=i)
    bad = tmp_path / "f" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "cache"
    assert_one_line_error(
        run_cli("data", "prepare", f"folder:{tmp_path / 'f'}", "--out", str(out), "--size", "16"), "2.png"
    )
    assert not out.exists()
    ok = run_cli(
        "data", "prepare", f"folder:{tmp_path / 'f'}", "--out", str(out), "--size", "16", "--skip-bad", "--quiet"
    )
    assert ok.returncode == 0, ok.stderr
    assert "skipped 1" in ok.stdout
    assert json.loads((out / "meta.json").read_text())["skipped"]["count"] == 1


def test_inspect_decodes_every_image_and_finds_a_truncated_png(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / "f" / cls / f"{i}.png", size=(64, 64), seed=i)
    bad = tmp_path / "f" / "b" / "2.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header still reads; the pixels do not
    proc = run_cli("data", "inspect", f"folder:{tmp_path / 'f'}")
    assert proc.returncode == 0, proc.stderr
    assert "no problems found" not in proc.stdout
    assert "all 6 images decoded" in proc.stdout and "64x64 (5)" in proc.stdout
    problems = proc.stdout.split("problems:")[1]
    assert "1 of 6 images cannot be decoded" in problems and "2.png" in problems, proc.stdout
    assert run_cli("data", "prepare", f"folder:{tmp_path / 'f'}", "--out", str(tmp_path / "c")).returncode == 2
    sampled = run_cli("data", "inspect", f"folder:{tmp_path / 'f'}", "--sample", "2", "--json")
    report = json.loads(sampled.stdout)
    assert report["images_checked"] == 2 and report["images"] == 6


@needs_data("nih-cxr14-sample")
def test_inspect_and_prepare_nih_sample(tmp_path):
    spec = f"nih:{SHARED_DATA / 'nih-cxr14-sample'}"
    proc = run_cli("data", "inspect", spec, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 703 and report["patients"] == 192
    assert report["image_sizes"] == {"64x64": 703} and report["images_checked"] == 703
    proc = run_cli("data", "prepare", spec, "--size", "32", "--out", str(tmp_path / "c"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "703 images at 32px" in proc.stdout


def test_inspect_names_the_csv_label_columns_and_warns_on_one_sided_classes(tmp_path):
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
    pd.DataFrame(
        {
            "image": [f"img/{i}.png" for i in range(4)],
            "labeled": ["1", "1", "1", "0"],
            "Effusion": ["1", "0", "0", "0"],
            "Nodule": ["0", "0", "0", "0"],
            "scanned": ["1", "1", "1", "1"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    report = inspect_dataset(f"csv:{tmp_path / 'labels.csv'}", val=0, test=0)
    assert report["classes"] == ["Effusion", "Nodule", "scanned"]
    assert report["no_finding"] == 0 and report["unlabelled"] == 1
    problems = " | ".join(report["problems"])
    assert "class 'scanned' has no negative images" in problems
    assert "class 'Nodule' has no positive images" in problems
    assert "1 images have no known label" in problems
    proc = run_cli("data", "inspect", f"csv:{tmp_path / 'labels.csv'}", "--val", "0", "--test", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "labels auto-detected: Effusion, Nodule, scanned" in proc.stdout
    assert "left out: labeled (bookkeeping" in proc.stdout


def test_inspect_table_shows_whole_class_names_on_a_narrow_terminal(tmp_path):
    long_names = ["Enlarged Cardiomediastinum", "Pleural_Thickening"]
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
    pd.DataFrame(
        {
            "path": [f"img/{i}.png" for i in range(4)],
            long_names[0]: ["1", "0", "0", "1"],
            long_names[1]: ["0", "1", "0", "0"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    env = {**os.environ, "COLUMNS": "60"}
    proc = subprocess.run(
        [sys.executable, "-m", "medsyn", "data", "inspect", f"csv:{tmp_path / 'labels.csv'}", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("positives per class")[1].split("train:")[0]
    assert all(name in table for name in long_names), table
    assert "1 normal (no positive label)" in proc.stdout
