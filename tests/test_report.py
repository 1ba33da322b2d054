"""Verdict rules and the HTML report, on hand-made metrics (the full pipeline is in test_pipeline.py)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from medsyn.evaluate.features import FeatureSpace
from medsyn.evaluate.privacy import distance_to_closest_record
from medsyn.evaluate.utility import UtilityRun
from medsyn.evaluate.verdicts import (
    NO_RESEMBLANCE,
    THRESHOLDS,
    Verdict,
    backbone_problem,
    filtered,
    overall,
    realistic_overall,
    realistic_verdict,
    reid_verdict,
    useful_verdict,
)
from medsyn.io import to_jsonable
from medsyn.report import ReportAssets, write_report
from medsyn.report import figures as F
from medsyn.report.html import training_text


def _utility(trtr: float, tstr: float, trtr_low: float = 0.7) -> dict:
    ratio = (tstr - 0.5) / (trtr - 0.5)
    return {
        "trtr": {"mean_auroc": trtr, "mean_ci_low": trtr_low},
        "tstr": {"mean_auroc": tstr, "mean_ci_low": tstr - 0.05},
        "ratio": {"tstr_over_trtr_above_chance": {"value": ratio, "ci_low": ratio - 0.1, "ci_high": ratio + 0.1}},
        "augmentation_gain": {"mean": 0.01, "mean_ci_low": -0.01, "mean_ci_high": 0.03},
    }


@pytest.mark.parametrize(("tstr", "level"), [(0.75, "pass"), (0.66, "warn"), (0.58, "fail")])
def test_useful_verdict_grades_the_above_chance_ratio(tstr, level):
    v = useful_verdict(_utility(0.8, tstr))
    assert v.level == level and "mean AUROC" in v.reason


def test_useful_verdict_not_assessed_without_a_working_real_classifier():
    assert useful_verdict(_utility(0.52, 0.51, trtr_low=0.45)).level == "n/a"
    assert useful_verdict({"skipped": "no test positives"}) == Verdict("utility (TSTR vs TRTR)", "n/a", "no test positives")


@pytest.mark.parametrize(("synthetic_fid", "precision", "level"),
                         [(3.0, 0.7, "pass"), (8.0, 0.7, "warn"), (20.0, 0.7, "fail"), (3.0, 0.3, "warn"), (3.0, 0.1, "fail")])  # fmt: skip
def test_realistic_verdict_uses_the_same_n_baseline_and_prdc(synthetic_fid, precision, level):
    fid = {"fid": synthetic_fid, "baseline": {"n": 100, "real_vs_real": 2.0, "synthetic_vs_real": synthetic_fid}}
    prdc = {"precision": precision, "recall": 0.6, "coverage": 0.9, "k": 5}
    v = realistic_verdict({"backbone": {"name": "net"}, "fid": fid, "prdc": prdc})
    assert v.level == level and "N=100" in v.reason


def _reid(fraction: float, ci_low: float, auroc_low: float = 0.8) -> dict:
    syn = {"fraction": fraction, "ci_low": ci_low, "ci_high": fraction + 0.05, "n_matched": 1, "n": 100}
    cal = {"threshold": 1.0, "heldout_fraction": 0.05, "synthetic": syn}
    ver = {"auroc": 0.9, "ci_low": auroc_low, "n_patients": 400}
    return {"verification": ver, "matching": {"gallery_calibrated": {"0.05": cal}}}


@pytest.mark.parametrize(("fraction", "ci_low", "auroc_low", "level"),
                         [(0.6, 0.5, 0.8, "fail"), (0.12, 0.09, 0.8, "warn"), (0.089, 0.075, 0.8, "pass"),
                          (0.05, 0.02, 0.8, "pass"), (0.05, 0.02, 0.55, "warn")])  # fmt: skip
def test_reid_verdict_compares_with_unseen_patients(fraction, ci_low, auroc_low, level):
    assert reid_verdict(_reid(fraction, ci_low, auroc_low)).level == level


def test_overall_takes_the_worst_and_caps_unassessed_at_warn():
    ok, bad = Verdict("a", "pass", "fine"), Verdict("b", "fail", "copies")
    assert overall("Private?", [ok, ok]).level == "pass"
    worst = overall("Private?", [ok, bad, Verdict("c", "warn", "hm")])
    assert worst.level == "fail" and worst.reason == "1 of 3 checks fail: b"
    capped = overall("Private?", [ok, Verdict("c", "n/a", "no patients")])
    assert capped.level == "warn" and "c (not assessed)" in capped.reason
    assert overall("Private?", [Verdict("c", "n/a", "no patients")]).level == "n/a"
    assert all(THRESHOLDS[q] for q in ("Useful?", "Realistic?", "Private?"))


def test_useful_is_capped_at_warn_for_a_collapsed_set():
    collapsed = Verdict("diversity (pixels64)", "fail", "2 distinct modes among 140 synthetic images")
    v = useful_verdict(_utility(0.8, 0.78), collapsed)
    assert v.level == "warn" and "collapsed" in v.reason
    assert useful_verdict(_utility(0.8, 0.58), collapsed).level == "fail"  # a cap, not a lift


def _fidelity(precision: float = 0.7, coverage: float = 0.9, **extra) -> dict:
    fid = {"fid": 3.0, "baseline": {"n": 100, "real_vs_real": 2.0, "synthetic_vs_real": 3.0}}
    return {"backbone": {"name": "net"}, "fid": fid, "prdc": {"precision": precision, "recall": 0.5,
            "coverage": coverage, "k": 5}, **extra}  # fmt: skip


def test_an_uninformative_backbone_makes_realistic_not_assessable():
    trained = {"trained_on": "real training split", "dim": 128, "training": {"best_val_mean_auroc": 0.9}}
    near_chance = backbone_problem(trained, _utility(0.57, 0.55, trtr_low=0.45), n=500)
    assert "0.570" in near_chance and "--features" in near_chance
    few = backbone_problem(trained, _utility(0.9, 0.85), n=86)
    assert "N = 86" in few and "D = 128" in few
    assert backbone_problem(trained, _utility(0.9, 0.85), n=500) is None
    assert backbone_problem({"trained_on": "external weights (not this data)", "dim": 1024}, {}, n=5000) is None
    assert "validation split" in backbone_problem(
        {**trained, "training": {"best_val_mean_auroc": 0.55}}, {"skipped": "no test positives"}, n=500)
    v = realistic_verdict(_fidelity(not_assessable=few))
    assert v.level == "n/a" and v.reason.startswith("not assessable: only N = 86") and "measured: FID" in v.reason
    fine = Verdict("diversity (pixels64)", "pass", "varied")
    assert realistic_overall(v, fine).level == "n/a"  # not PASS on the strength of diversity alone
    collapsed = Verdict("diversity (pixels64)", "fail", "2 modes")
    assert realistic_overall(v, collapsed).level == "fail"
    assert realistic_overall(realistic_verdict(_fidelity()), fine).level == "pass"


def test_no_resemblance_is_said_plainly():
    v = realistic_verdict(_fidelity(precision=0.0, coverage=0.0))
    assert v.level == "fail" and NO_RESEMBLANCE in v.reason


def test_filtered_checks_are_shown_but_an_independent_space_decides():
    screen = {"pixel": {"threshold": 1.0, "percentile": 1.0}, "reid": None}
    pixel = filtered(Verdict("dcr (pixels64)", "pass", "ok"), screen, pixel=True, reid=False)
    reid = filtered(Verdict("re-identification", "pass", "ok"), screen, pixel=False, reid=True)
    assert not pixel.decides and "filtered, not independent evidence" in pixel.reason and reid.decides
    feature = Verdict("dcr (smallcnn)", "warn", "more than expected")
    v = overall("Private?", [pixel, feature, reid])
    assert v.level == "warn" and "dcr (smallcnn)" in v.reason and "not deciding (filtered): dcr (pixels64)" in v.reason
    only = overall("Private?", [pixel])
    assert only.level == "warn" and "none is independent evidence" in only.reason
    assert filtered(feature, None, pixel=True, reid=False) is feature


def test_training_progress_text():
    assert training_text(None).startswith("unknown")
    cut = {"steps": 30, "steps_planned": 3000, "images_seen": 1920, "train_seconds": 150.0, "stop_reason": "time-limit"}
    assert training_text(cut) == "30 of 3,000 steps, 1,920 images seen, 150 s — stopped by the time limit before the planned steps"


# --------------------------------------------------------------------------------------------- the page


def _metrics(dcr: dict) -> dict:
    split = {"images": 10, "patients": 5, "positives": {"A": 3}}
    return to_jsonable({
        "medsyn_version": "0.1.0",
        "settings": {"quick": True, "seed": 0, "device": "cpu",
                     "utility": {"classifier": {"model": "smallcnn", "epochs": 1, "patience": 1, "batch_size": 8},
                                 "seeds": [0], "n_bootstrap": 10, "ci_level": 0.95, "bootstrap_seed": 0},
                     "reid": {"encoder": "smallcnn", "head": "cosine", "epochs": 1, "steps_per_epoch": 2,
                              "batch_pairs": 4, "seed": 0}},
        "data": {"real": {"dataset": "phantom", "spec": "phantom?n=30", "cache": "/c", "content_hash": "x", "size": 16,
                          "channels": 1, "label_policy": "ignore", "split_seed": 0,
                          "splits": {"train": split, "val": split, "test": split}},
                 "synthetic": {"location": "/syn", "kind": "csv", "images": 40, "positives": {"A": 9},
                               "generator": None, "notes": [],
                               "training": {"steps": 30, "steps_planned": 3000, "images_seen": 1920}},
                 "classes": ["A"], "notes": ["a <b>bold</b> note"]},
        "utility": {"skipped": "too few test positives"},
        "fidelity": {"skipped": "no backbone", "backbone": {"skipped": "no backbone"}, "warning": NO_RESEMBLANCE},
        "privacy": {"dcr": {"pixel": dcr}, "membership_inference": {"pixel": {"skipped": "too few"}},
                    "reidentification": {"skipped": "no patient has two images"},
                    "checks": [{"check": "dcr (pixels)", "level": "pass", "reason": "ok"}]},
        "verdicts": {"useful": {"level": "n/a", "reason": "too few test positives"},
                     "realistic": {"level": "n/a", "reason": "no backbone"},
                     "private": {"level": "warn", "reason": "1 of 3 checks need attention"}},
        "timings": {"report": {"wall_s": 0.5, "cpu_s": 0.4}},
    })  # fmt: skip


def test_report_renders_skipped_sections_self_contained(tmp_path):
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(n, 8)) for k, n in (("syn", 40), ("train", 30), ("held", 25))}
    dcr = distance_to_closest_record(feats["syn"], feats["train"], feats["held"], FeatureSpace("pixels", "test"))
    images = rng.integers(0, 255, (40, 1, 16, 16), dtype=np.uint8)
    labels = (rng.random((40, 1)) < 0.5).astype(np.float32)
    assets = ReportAssets.collect(images[:30], labels[:30], images, labels, ["A"], {"pixel": dcr}, {}, None, {},
                                  None, real_images=False, per_group=4)  # fmt: skip
    assert all(real is None for _, real, _ in assets.groups) and all(pair[1] is None for pair in assets.closest)
    write_report(_metrics(dcr.to_dict()), assets, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "NOT ASSESSED" in page and "no patient has two images" in page and "WARN" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) >= 2 and all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
    assert "This report shows real training images" not in page
    assert "Generator training: 30 of 3,000 steps, 1,920 images seen" in page and NO_RESEMBLANCE in page


def test_figures_draw_from_plain_arrays():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (3, 3, 20, 20), dtype=np.uint8)  # colour images too
    assert F.sample_grid([("A", img, img[:1]), ("B", None, img)], 3)
    assert F.closest_pairs([(img[0], img[1], 0.1), (img[2], None, 0.5)], 0.2)
    assert F.roc_curves({"pixels": (rng.random(30), rng.random(20) + 0.3, 0.7)})
    assert F.sample_grid([], 3) is None and F.closest_pairs([], 0.1) is None and F.utility_forest({}) is None


def test_utility_roc_uses_first_seed_scores_of_evaluable_classes():
    rng = np.random.default_rng(2)
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    labels[:5, 0] = np.nan  # masked: left out
    labels[:, 2] = 0  # one label value only: no curve
    scores = {s: rng.normal(size=(2, 40, 3)) for s in ("trtr", "tstr", "augmented")}
    run = UtilityRun(report={}, classes=["A", "B", "C"], seeds=[4, 5], models={}, scores=scores,
                     test_labels=labels, training={})  # fmt: skip
    assets = ReportAssets.collect(np.zeros((4, 1, 8, 8), np.uint8), labels[:4], np.zeros((4, 1, 8, 8), np.uint8),
                                  labels[:4], ["A", "B", "C"], {}, {}, None, {}, None, utility=run)  # fmt: skip
    assert list(assets.utility_roc) == ["A", "B"]
    y, score = assets.utility_roc["A"]["tstr"]
    assert len(y) == 35 and np.array_equal(score, scores["tstr"][0, 5:, 0])
    png = F.utility_roc(assets.utility_roc)
    assert base64.b64decode(png)[:4] == b"\x89PNG" and F.utility_roc({}) is None
    five = {f"class {k}": assets.utility_roc["B"] for k in range(5)}  # two rows, three empty panels
    assert F.utility_roc(five)
