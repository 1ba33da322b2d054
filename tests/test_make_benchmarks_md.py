"""benchmarks/make_benchmarks_md.py: the markdown is rendered from stored results alone (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_benchmarks_md.py"


@pytest.fixture(scope="module")
def mbm():
    spec = importlib.util.spec_from_file_location("make_benchmarks_md", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _auroc(v: float) -> dict:
    return {
        "mean_auroc": v,
        "mean_ci_low": v - 0.02,
        "mean_ci_high": v + 0.02,
        "classes": {c: {"auroc": v, "ci_low": v - 0.05, "ci_high": v + 0.05} for c in ("Rare", "Common")},
    }


RESULT = {
    "status": "ok",
    "experiment": {"key": "fake", "title": "Fake set", "size": 28, "steps": 100, "model": "cgan", "why": "a test"},
    "steps": {
        name: {
            "command": f".venv/bin/medsyn {name} --fake",
            "exit_code": 0,
            "wall_s": 12.5,
            "cpu_s": 20.25,
            "start": "2026-01-01T00:00:00+00:00",
            "load_1min": {"before": 0.5, "max": 1.5, "after": 1.0},
            "git": {"commit": "abc123", "dirty": False},
        }
        for name in ("evaluate", "train", "prepare", "generate")
    },
    "train": {
        "median_img_per_s": 812.5,
        "n_rates": 10,
        "steps": 100,
        "images_seen": 6400,
        "config": {"model": "cgan", "width": 32, "batch": 64},
        "runtime": {"precision": "fp32"},
    },
    "synthetic": {"images": 500, "mode": "balance"},
    "metrics": {
        "data": {
            "real": {
                "splits": {
                    "train": {"images": 900, "positives": {"Rare": 7, "Common": 400}},
                    "test": {"images": 100, "positives": {"Rare": 5, "Common": 60}},
                }
            }
        },
        "utility": {
            "classes": ["Rare", "Common"],
            "n_images": 100,
            "n_patients": 40,
            "n_seeds": 1,
            "n_bootstrap": 200,
            "trtr": _auroc(0.812),
            "tstr": _auroc(0.701),
            "augmented": _auroc(0.823),
            "ratio": {
                "tstr_over_trtr": {"value": 0.863, "ci_low": 0.8, "ci_high": 0.9},
                "tstr_over_trtr_above_chance": {"value": 0.644, "ci_low": 0.5, "ci_high": 0.75},
            },
            "augmentation_gain": {
                "mean": 0.011,
                "mean_ci_low": -0.01,
                "mean_ci_high": 0.03,
                "per_class": {"Rare": {"gain": 0.042, "ci_low": 0.013, "ci_high": 0.071}},
            },
        },
        "fidelity": {
            "backbone": {"name": "smallcnn-real-train-28px", "implementation": "SmallCNN test"},
            "fid": {
                "fid": 12.34,
                "n_real": 100,
                "n_synthetic": 500,
                "baseline": {"n": 50, "real_vs_real": 1.23, "real_vs_real_std": 0.1, "synthetic_vs_real": 13.5},
            },
            "kid": {"kid": 0.0456, "kid_std": 0.0012, "n_subsets": 100, "subset_size": 50},
            "prdc": {"precision": 0.61, "recall": 0.52, "density": 0.93, "coverage": 0.74, "k": 5},
        },
        "privacy": {
            "dcr": {
                "pixel": {"space": "pixels28", "fraction_below_p1": 0.0123, "fraction_below_p5": 0.0456,
                          "nearest_patient": {"synthetic": 0.45, "holdout": 0.12, "training": 0.085}},
                "feature": {"skipped": "no backbone"},
            },
            "membership_inference": {"pixel": {"space": "pixels28", "auroc": 0.513, "ci_low": 0.49, "ci_high": 0.53}},
            "reidentification": {"skipped": "no patient has two images"},
        },
        "verdicts": {"useful": {"check": "Useful?", "level": "warn", "reason": "keeps 64%"}},
        "timings": {"fidelity: FID": {"wall_s": 1.5, "cpu_s": 2.5}},
    },
}


def test_render_puts_measured_numbers_in_tables(mbm, tmp_path):
    md = mbm.render(
        [RESULT],
        {"cpu": "Test CPU", "cores": 2, "run_commands": ["python make.py"]},
        None,
        "w",
        None,
        tmp_path / "B.md",
    )
    for text in (
        "| TRTR: train real, test real | 0.812 [0.792, 0.832] |",
        "| above-chance ratio (TSTR − 0.5) / (TRTR − 0.5) | 0.644 [0.500, 0.750] |",
        "| Rare | 7 | 5 | 0.812 [0.762, 0.862] | 0.701 [0.651, 0.751] | 0.823 [0.773, 0.873] | 0.042 [0.013, 0.071] |",
        "| FID (all images) | 12.340 |",
        "| FID real vs real (baseline) | 1.230 ± 0.100 |",
        "| KID | 0.046 ± 0.001 |",
        "| coverage | 0.740 | k = 5 |",
        "DCR (pixels28): synthetic closer to train than held-out p1 | 1.2%",
        "| membership inference AUROC, distance (pixels28) | 0.513 [0.490, 0.530] |",
        "nearest to one training patient | 45.0% | held-out images: 12.0%; that patient's share of training images: 8.5% |",
        "n/a (no patient has two images)",
        "| training, median of logged rates | 812.5 |",
        "precision fp32",
        "| generation, whole command | 40.0 |",
        "`smallcnn-real-train-28px`",
        "## Fake set (28 px, cgan, 100 steps)",
        "A test. Measured at commit `abc123`.",
        "Test CPU",
        "Do not edit by hand",
    ):
        assert text in md, text
    cmds = md.index("```bash\n.venv/bin/medsyn prepare")  # steps in pipeline order, not the JSON's sorted order
    assert (
        md.index("medsyn train --fake", cmds)
        < md.index("medsyn generate --fake", cmds)
        < md.index("medsyn evaluate --fake", cmds)
    )


def test_render_survives_missing_and_failed_results(mbm, tmp_path):
    failed = {**RESULT, "status": "failed", "steps": {"train": {"command": "x", "exit_code": 2, "tail": "error: bad"}}}
    md = mbm.render([{"experiment": {"key": "empty"}, "status": "ok"}, failed], {}, {}, "w", None, tmp_path / "B.md")
    assert "**Failed at `train`** (exit 2)" in md and "error: bad" in md
    assert "Not assessed" in md


def test_gpu_section_applies_the_stated_formula(mbm):
    flops = {
        "gans": [{"model": "stylegan2", "size": 256, "flops_per_image": 1e11, "params_g": 2e7, "params_d": 2e7}],
        "classifiers": [{"model": "densenet121", "size": 256, "flops_per_image": 2e10}],
        "eval_epochs": 20,
        "eval_seeds": 3,
        "torch": "x",
    }
    md = mbm.gpu_section(flops)
    hours = 1e11 * mbm.GPU_IMAGES_SEEN / (mbm.PEAK_TFLOPS["A100"] * 1e12 * mbm.MFU[0]) / 3600
    assert f"| stylegan2 | 256 | 100.0 | 40.0 M | 1.000 | {hours:.3f} |" in md
    assert "torchrun --nproc_per_node 8 -m medsyn train cache/nih256 --model stylegan2 --size 256 --augment ada" in md
    assert "No GPU was measured" in md


def test_sweep_section_reads_the_csv_or_says_why_not(mbm, tmp_path):
    sweep = tmp_path / "sweep"
    assert "missing" in mbm.sweep_section(sweep, tmp_path / "B.md")
    (sweep / "out").mkdir(parents=True)
    header = "point,real_train_images,synthetic_images,generator_steps,generator_train_s,trtr_auroc,trtr_ci_low,"
    header += "trtr_ci_high,tstr_auroc,tstr_ci_low,tstr_ci_high,ratio,ratio_ci_low,ratio_ci_high,ratio_above_chance,"
    header += "ratio_above_chance_ci_low,ratio_above_chance_ci_high,augmented_auroc,point_wall_s\n"
    (sweep / "out" / "results.csv").write_text(header)
    assert "no rows" in mbm.sweep_section(sweep, tmp_path / "B.md")
    row = "50,100,100,900,120.0,0.9,0.85,0.95,0.8,0.7,0.9,0.8889,0.8,0.95,0.75,,,0.91,150.2\n"
    (sweep / "out" / "results.csv").write_text(header + row)
    (sweep / "out" / "sweep.png").write_bytes(b"\x89PNG fake")
    mbm.write_json_atomic(sweep / "step.json", {"command": "medsyn benchmark --x", "wall_s": 600.4, "exit_code": 0})
    md = mbm.sweep_section(sweep, tmp_path / "B.md")
    assert "`medsyn benchmark --x`: 600 s wall" in md
    assert "| 50 | 100 | 100 | 900 | 120 | 0.900 [0.850, 0.950] | 0.800 [0.700, 0.900] | 0.889 [0.800, 0.950] |" in md
    assert "| 0.750 [n/a, n/a] | 0.910 | 150.200 |" in md
    assert "![sweep](docs/benchmarks/sweep-samples-pneumoniamnist.png)" in md
    assert (tmp_path / "docs/benchmarks/sweep-samples-pneumoniamnist.png").read_bytes() == b"\x89PNG fake"


def test_reference_section_sets_medsyn_beside_the_textbook(mbm):
    summary = {"gan_seconds": 10.0, "gan_steps": 50, "gan_batch": 64, "gan_img_per_s": 320.0, "clf_seeds": 3,
               "trtr_auroc": [0.9, 0.01], "tstr_auroc": [0.6, 0.02], "tstr_over_trtr": 0.6667,
               "label_fidelity_auroc": [0.95, 0.01]}  # fmt: skip
    r = {**RESULT, "reference": {"command": "python textbook.py", "exit_code": 0, "wall_s": 30, "summary": summary}}
    md = mbm.reference_section(r)
    assert "| images shown to D | 6,400 | 3,200 | 2.000 |" in md
    assert "| TSTR mean AUROC | 0.701 [0.681, 0.721] | 0.600 ± 0.020 | 1.168 |" in md
    assert "| TSTR / TRTR | 0.863 [0.800, 0.900] | 0.667 | 1.294 |" in md
    assert "Side by side" in mbm.experiment_section(r)
    assert "Not run: x.py not found" in mbm.reference_section({"reference": {"skipped": "x.py not found"}})
    failed = mbm.reference_section({"reference": {"command": "c", "exit_code": 1, "tail": "boom"}})
    assert "failed (exit 1)" in failed and "boom" in failed


def test_nearest_patient_row_only_where_patients_have_several_images(mbm):
    m = RESULT["metrics"]
    assert "nearest to one training patient" in mbm.privacy_section(m)
    singles = {**m, "data": {"real": {"splits": {"train": {"images": 900, "patients": 900}}}}}
    assert "nearest to one training patient" not in mbm.privacy_section(singles)


def test_recorded_runs_a_command_once_and_again_after_a_failure(mbm, tmp_path):
    argv, record, log = [sys.executable, "-c", "print('done')"], tmp_path / "r.json", tmp_path / "r.log"
    cleared: list[int] = []
    first, ran = mbm.recorded("t", argv, record, log, before=lambda: cleared.append(1),
                              finish=lambda r: r.update(extra=log.read_text().strip()))  # fmt: skip
    assert ran and first["exit_code"] == 0 and first["extra"] == "done" and cleared == [1]
    assert mbm.recorded("t", argv, record, log, before=lambda: cleared.append(1)) == (first, False) and cleared == [1]
    assert mbm.recorded("t", argv, record, log, rerun=True)[1]
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert mbm.recorded("t", failing, record, log)[0]["exit_code"] == 3
    assert mbm.recorded("t", failing, record, log)[1]  # a failed step is run again


def test_compare_section_tabulates_every_side_and_says_what_was_not_measured(mbm):
    model = {"model": "ddpm", "key": {"config": {"widths": {"ddpm": 16}}},
             "summary": {"ratio": [0.97, 0.95, 0.99], "trtr": [0.95, 0.93, 0.97], "tstr": [0.92, 0.9, 0.94],
                         "recall": 0.61, "coverage": 0.72, "fid": 12.5, "fid_real_vs_real": 3.25,
                         "privacy_checks": [{"check": "DCR (pixels)", "level": "pass"},
                                            {"check": "membership inference", "level": "fail"}]},
             "progress": {"train_seconds": 300.4, "steps": 812}, "generate": {"wall_s": 240.0, "img_per_s": 19.6},
             "train": {"load_before": 5.5, "load_after": 6.25}}  # fmt: skip
    textbook = {"command": "python textbook_ddpm_tstr.py", "exit_code": 0, "wall_s": 900.0,
                "load_1min": {"before": 5.0, "after": 6.0, "max": 7.5},
                "summary": {"tstr_over_trtr": 0.924, "trtr_auroc": [0.948, 0.002], "tstr_auroc": [0.875, 0.004],
                            "train_seconds": 300.0, "train_steps": 400, "sample_seconds": 358.0, "n_synthetic": 4708,
                            "params_m": 1.48, "memorisation_l2_01": {"frac_syn_below_test_p5": 0.01}}}  # fmt: skip
    text = mbm.compare_section({"budget_min": 5.0, "threads": "1", "medsyn": {"models": [model]},
                                "steps": {"medsyn": {"command": "medsyn benchmark --compare ddpm", "exit_code": 0},
                                          "textbook-ddpm": textbook,
                                          "textbook-cgan": {"command": "python textbook_cgan_tstr.py",
                                                            "exit_code": 1}}})  # fmt: skip
    ddpm_row = next(line for line in text.splitlines() if line.startswith("| medsyn ddpm (width 16)"))
    assert "0.970 [0.950, 0.990]" in ddpm_row and "0.610" in ddpm_row and "12.50 (3.25)" in ddpm_row
    assert "membership inference" in ddpm_row and "812 steps, n/a img/s" in ddpm_row and "19.6 img/s" in ddpm_row
    tb_row = next(line for line in text.splitlines() if line.startswith("| textbook ddpm (1.48M params)"))
    assert "0.924" in tb_row and "0.948 ± 0.002" in tb_row and "13.2 img/s" in tb_row and "max 7.50" in tb_row
    assert "| textbook-cgan | not measured (exit 1; n/a s) |" in text
    assert "5.0 min each" in text and "not the 10 min" in text


def test_splice_section_replaces_or_inserts_one_section_and_keeps_the_rest(mbm):
    text = "# Benchmarks\n\n## A\n\nold a\n\n## Full-size runs on GPUs: recipe and estimated cost\n\ngpu\n"
    gpu = mbm.GPU_TITLE
    once = mbm.splice_section(text, "## New", "new body", gpu)
    assert once == "# Benchmarks\n\n## A\n\nold a\n\n## New\n\nnew body\n\n" + gpu + "\n\ngpu\n"
    again = mbm.splice_section(once, "## New", "newer\n\n| t |", gpu)
    assert again.count("## New") == 1 and "newer\n\n| t |" in again and "new body" not in again
    assert again.startswith("# Benchmarks\n\n## A\n\nold a\n") and again.endswith(gpu + "\n\ngpu\n")
    assert mbm.splice_section("# B\n", "## X", "x", gpu) == "# B\n\n## X\n\nx\n"


def test_splice_section_by_prefix_replaces_an_experiment_whose_settings_changed(mbm):
    """A re-measured data set replaces its old section even when the heading's step count differs."""
    text = "# B\n\n## NIH sample (64 px, cgan, 2,500 steps)\n\nold\n\n## covid (64 px)\n\nkeep\n"
    out = mbm.splice_section(text, "## NIH sample (64 px, cgan, 3,000 steps)", "new", "## none", prefix="## NIH sample (")
    assert out == "# B\n\n## NIH sample (64 px, cgan, 3,000 steps)\n\nnew\n\n## covid (64 px)\n\nkeep\n"


def test_compare_section_says_sides_ran_one_after_the_other_at_the_full_budget(mbm):
    text = mbm.compare_section({"budget_min": 10.0, "threads": "1", "jobs": 1, "medsyn": {}, "steps": {}})
    assert "10.0 min each)" in text and "one side after the other" in text and "not the 10 min" not in text
    two = mbm.compare_section({"budget_min": 10.0, "threads": "1", "jobs": 2, "steps": {},
                               "medsyn": {"models": [{"model": "cgan", "generate": {"images": 4708}}]}})  # fmt: skip
    assert "in two processes" in two and "4,708 synthetic images per model" in two


def test_a_balance_row_that_lacks_a_class_is_marked_not_valid(mbm):
    """--balance writes no image of the largest group: a row whose set lacks a class says its TSTR is not valid;
    a set that lacks only the negative group (every class has images) is not marked."""
    lacks = {"mode": "balance", "negative_class": "normal", "counts": {"normal": 2280, "pneumonia": 0}}
    assert "for pneumonia: rerun" in mbm.balance_caveat(lacks)
    assert mbm.balance_caveat({**lacks, "counts": {"normal": 0, "pneumonia": 10}}) is None
    assert mbm.balance_caveat({**lacks, "mode": "distribution"}) is None
