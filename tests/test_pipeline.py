"""`medsyn evaluate` end to end on the phantom, and the synthetic-set loader.

The decisive test: a "synthetic" set of slightly perturbed copies of TRAINING images must be flagged by
every privacy check (DCR, membership inference, re-identification), while independent phantom images of
patients nobody trained on must not be. Models are tiny (1 epoch) so the file stays within a minute.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from medsyn.cli.evaluate import register
from medsyn.data.cache import PreparedDataset, prepare
from medsyn.data.phantom import PHANTOM_CLASSES, render_phantom
from medsyn.errors import ConfigError, DataError
from medsyn.evaluate.pipeline import TRTR_ORIGIN, EvalSettings, evaluate, open_real
from medsyn.evaluate.privacy.reid import load_reid
from medsyn.evaluate.privacy_stage import NO_RUN
from medsyn.evaluate.real import members
from medsyn.evaluate.synthetic import align_labels, load_synthetic, open_synthetic
from medsyn.generate.layout import Layout
from medsyn.models.classifiers import load_classifier
from medsyn.report.summary import summary_rows

SIZE = 32
TINY = {
    "classifier": {"epochs": 1, "batch_size": 32},
    "utility": {"n_bootstrap": 50},
    "reid": {"epochs": 1, "steps_per_epoch": 12},
    "kid_subsets": 20,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is faster
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> PreparedDataset:
    return prepare("phantom?n=480", SIZE, tmp_path_factory.mktemp("real") / "cache", quiet=True)


def _save(folder: Path, paths: list[str], images: np.ndarray) -> None:
    for rel, img in zip(paths, images, strict=True):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / rel)


def write_generated(folder: Path, images: np.ndarray, labels: np.ndarray, train_config: dict, **extra) -> Path:
    """A set laid out as `medsyn generate` writes it for an NIH-format run (labels file + manifest); `extra`
    manifest entries (training progress, privacy filter, negative class)."""
    layout = Layout.for_source("nih", PHANTOM_CLASSES, {})
    paths = layout.image_paths(labels)
    _save(folder, paths, images)
    layout.write_labels(folder, folder.name, paths, labels.astype(np.uint8))
    manifest = {"format": "medsyn-synthetic", "layout": layout.kind, "labels_file": layout.labels_file,
                "images": len(images), "model": "copies (test)", "seed": 0, "train_config": train_config, **extra}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def copies(real, tmp_path_factory) -> dict:
    """200 training images with +-3 grey levels of noise, evaluated through the Python API."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(real.rows("train"), 200, replace=False))
    noisy = np.asarray(real.images[rows]).astype(np.int16) + rng.integers(-3, 4, (len(rows), 1, SIZE, SIZE))
    folder = write_generated(
        tmp_path_factory.mktemp("syn") / "copies", np.clip(noisy, 0, 255).astype(np.uint8), real.labels[rows],
        {"data": str(real.path), "size": SIZE, "split_seed": 0, "classes": None},
    )  # fmt: skip
    out = tmp_path_factory.mktemp("eval") / "copies"
    return evaluate(real.path, folder, out, quick=True, device="cpu", settings=TINY, quiet=True)


@pytest.fixture(scope="module")
def independent(real, tmp_path_factory) -> tuple[dict, str, Path]:
    """Phantom images of unseen patients, rendered at 40 px, in the folder layout, through the CLI; the utility
    stage is skipped (an impossible minimum of test positives), so the feature backbone is trained separately."""
    batch = render_phantom(250, 40, seed=0, start=100_000)
    folder = tmp_path_factory.mktemp("syn") / "independent"
    layout = Layout.for_source("folder", PHANTOM_CLASSES, {})
    paths = layout.image_paths(batch.labels.astype(np.uint8))
    _save(folder, paths, np.round(batch.images * 255).astype(np.uint8))
    out = tmp_path_factory.mktemp("eval") / "independent"
    settings = out.parent / "settings.yaml"
    settings.write_text(yaml.safe_dump({**TINY, "utility": {**TINY["utility"], "min_test_positives": 10_000}}))
    app = typer.Typer()
    register(app)
    args = ["--real", str(real.path), "--synthetic", f"folder:{folder}", "--out", str(out), "--quick",
            "--device", "cpu", "--settings", str(settings), "--no-real-images", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text()), result.output, out


@pytest.fixture(scope="module")
def collapsed(real, tmp_path_factory) -> dict:
    """Two unseen phantom images repeated 120 times each, from a generator whose privacy filter screened pixel
    distances and that stopped at its time limit: the set the verdicts must not pass."""
    batch = render_phantom(2, SIZE, seed=5, start=200_000)
    images = np.round(batch.images * 255).astype(np.uint8)[np.arange(240) % 2]
    labels = batch.labels.astype(np.float32)[np.arange(240) % 2]
    screen = {"pixel": {"threshold": 0.5, "percentile": 1.0}, "reid": None, "rejected": 0, "candidates": 240}
    folder = write_generated(
        tmp_path_factory.mktemp("syn") / "collapsed", images, labels,
        {"data": str(real.path), "size": SIZE, "split_seed": 0, "classes": None}, privacy_filter=screen,
        training={"steps": 30, "steps_planned": 3000, "images_seen": 960, "train_seconds": 12.0,
                  "stop_reason": "time-limit"},
    )  # fmt: skip
    out = tmp_path_factory.mktemp("eval") / "collapsed"
    return evaluate(real.path, folder, out, quick=True, device="cpu", settings={**TINY, "saliency": {"images": 0}},
                    quiet=True)  # fmt: skip


def test_a_collapsed_filtered_set_fails_realistic_and_the_filter_does_not_decide(collapsed):
    div = collapsed["diversity"]
    assert div["synthetic_modes"] == 2 and div["verdict"]["level"] == "fail"
    assert collapsed["verdicts"]["realistic"]["level"] == "fail" and "collapsed" in collapsed["verdicts"]["realistic"]["reason"]
    assert collapsed["verdicts"]["useful"]["level"] != "pass"
    checks = {c["check"]: c for c in collapsed["privacy"]["checks"]}
    pixel = [c for name, c in checks.items() if "pixels" in name]
    assert pixel and all(not c["decides"] and "filtered, not independent evidence" in c["reason"] for c in pixel)
    assert checks["dcr (smallcnn-real-train-32px)"]["decides"]
    assert "not deciding (filtered)" in collapsed["verdicts"]["private"]["reason"]
    training = collapsed["data"]["synthetic"]["training"]
    assert training["steps"] == 30 and training["stop_reason"] == "time-limit"
    page = Path(collapsed["report"]).read_text()
    assert "30 of 3,000 steps, 960 images seen" in page and 'alt="closest synthetic pairs"' in page
    # the saliency stage switched off by a setting: skipped, with no extra classifier trained
    assert collapsed["saliency"]["skipped"].startswith("switched off") and "saliency" not in " ".join(collapsed["timings"])


def test_a_configuration_error_inside_a_stage_stops_the_run(real, tmp_path):
    imgs = render_phantom(30, SIZE, seed=1, start=300_000)
    syn = (np.round(imgs.images * 255).astype(np.uint8), imgs.labels, PHANTOM_CLASSES)
    with pytest.raises(ConfigError, match="no-such-net") as info:  # was recorded as a skipped utility stage
        evaluate(real.path, syn, tmp_path / "out", quick=True, quiet=True, settings={"classifier": {"model": "no-such-net"}})
    assert "\n" not in str(info.value)


def test_align_labels_recognises_the_manifests_negative_class():
    labels = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    out, notes = align_labels(["Nodule", "healthy"], labels, ["Nodule"], False, negative="healthy")
    np.testing.assert_array_equal(out, [[1], [0], [0]])
    assert notes == []
    with pytest.raises(DataError, match="healthy"):  # not named by a manifest: an unknown class with positives
        align_labels(["Nodule", "healthy"], labels, ["Nodule"], False)
    for default in ("normal", "No Finding"):  # without a manifest, both names generate uses mean "no positive"
        assert align_labels(["Nodule", default], labels, ["Nodule"], False)[1] == []


def _levels(metrics: dict) -> dict[str, str]:
    return {c["check"].split(" (")[0] + (" feature" if "smallcnn" in c["check"] else ""): c["level"]
            for c in metrics["privacy"]["checks"]}  # fmt: skip


def test_copies_of_training_images_fail_every_privacy_check(copies):
    levels = _levels(copies)
    assert levels == {"dcr": "fail", "dcr feature": "fail", "membership inference": "fail", "re-identification": "fail",
                      "membership inference, density ratio": "fail",
                      # copies of 200 training images spread over many patients: no one patient stands out
                      "nearest-patient concentration": "pass", "nearest-patient concentration feature": "pass"}
    p = copies["privacy"]
    assert p["dcr"]["pixel"]["fraction_below_p1"] > 0.9
    assert p["membership_inference"]["pixel"]["auroc"] > 0.65
    assert p["membership_inference"]["density pixel"]["auroc"] > 0.65  # DOMIAS: reference = validation patients
    assert p["membership_inference"]["model"] == {"not_applicable": True, "skipped": NO_RUN}  # no --run given
    assert p["reidentification"]["matching"]["gallery_calibrated"]["0.05"]["synthetic"]["fraction"] > 0.9
    assert copies["verdicts"]["private"]["level"] == "fail"


def test_independent_unseen_patients_pass_privacy(independent):
    metrics, _, out = independent
    levels = _levels(metrics)
    assert "fail" not in levels.values(), metrics["privacy"]["checks"]
    assert levels["membership inference"] == "pass"
    p = metrics["privacy"]
    assert p["dcr"]["pixel"]["fraction_below_p1"] < 0.05
    assert abs(p["membership_inference"]["pixel"]["auroc"] - 0.5) < 0.1
    assert abs(p["membership_inference"]["pixel"]["split_shift"]["auroc"] - 0.5) < 0.15  # one pool: no shift
    assert abs(p["membership_inference"]["density pixel"]["auroc"] - 0.5) < 0.15
    assert abs(p["membership_inference"]["density pixel"]["split_shift"]["auroc"] - 0.5) < 0.15
    assert p["reidentification"]["matching"]["gallery_calibrated"]["0.05"]["synthetic"]["fraction"] < 0.15
    # Utility skipped: the feature backbone (and the saved classifier) is trained once with the TRTR recipe.
    assert "skipped" in metrics["utility"] and "utility was skipped" in " ".join(metrics["timings"])
    assert "utility stage was skipped" in metrics["fidelity"]["backbone"]["training"]["model"]
    assert Path(metrics["models"]["classifier"]["path"]) == out / "models" / "classifier"


def test_metrics_json_has_every_section_and_the_fid_metadata(copies, real):
    for key in ("utility", "fidelity", "privacy", "verdicts", "data", "settings", "timings"):
        assert key in copies
    assert set(copies["verdicts"]) == {"useful", "realistic", "private"}
    u = copies["utility"]
    assert {"trtr", "tstr", "augmented", "ratio", "augmentation_gain"} <= set(u)
    assert all("ci_low" in u["tstr"]["classes"][c] for c in PHANTOM_CLASSES)
    fid = copies["fidelity"]["fid"]
    assert fid["backbone"].startswith("smallcnn") and "trained here on the real training split" in fid["implementation"]
    assert fid["n_real"] == len(real.rows("val")) + len(real.rows("test")) and fid["n_synthetic"] == 200
    assert fid["baseline"]["n"] > 0 and fid["baseline"]["real_vs_real"] > 0
    assert {"kid", "kid_std"} <= set(copies["fidelity"]["kid"]) and copies["fidelity"]["prdc"]["k"] == 5
    assert len(copies["fidelity"]["per_class_fid"]) == len(PHANTOM_CLASSES)
    assert copies["fidelity"]["intensity"]["symmetric_kl"] < 0.05
    data = copies["data"]
    assert data["synthetic"]["kind"] == "medsyn-generate" and data["synthetic"]["images"] == 200
    assert data["notes"] == [] and data["real"]["label_policy"]
    # the NIH layout has 14 classes; the 9 the phantom lacks have no positives and are ignored silently
    assert data["classes"] == PHANTOM_CLASSES
    stages = " ".join(copies["timings"])
    for stage in ("utility", "features", "FID", "KID", "PRDC", "DCR", "membership", "re-identification", "models"):
        assert stage in stages


def test_the_trtr_model_is_reused_and_saved_with_the_reid_model(copies):
    backbone = copies["fidelity"]["backbone"]
    assert backbone["training"]["model"] == TRTR_ORIGIN and "first-seed TRTR" in copies["fidelity"]["fid"]["implementation"]
    assert backbone["training"]["best_epoch"] == copies["utility"]["trtr"]["training"][0]["best_epoch"]
    assert not any("domain classifier" in stage for stage in copies["timings"])  # not trained a second time
    models = copies["models"]
    assert "real patient images" in models["note"] and "TRTR" in models["classifier"]["what"]
    clf = load_classifier(models["classifier"]["path"])
    assert clf.meta["classes"] == PHANTOM_CLASSES == models["classifier"]["classes"]
    assert clf.meta["training"]["best_epoch"] == backbone["training"]["best_epoch"] and clf.arch["size"] == SIZE
    reid = load_reid(models["reid"]["path"], device="cpu")
    assert reid.meta["n_train_patients"] == copies["privacy"]["reidentification"]["training"]["n_patients"]
    assert reid.embed(np.zeros((2, 1, SIZE, SIZE), np.uint8)).shape[0] == 2


def test_saliency_stage_compares_real_and_synthetic_trained_maps_with_a_seed_baseline(copies, independent, real):
    sal = copies["saliency"]
    n_test = len(real.rows("test"))
    assert sal["images"] == min(100, n_test) and sal["method"] == "gradcam" and "Wilcoxon" in sal["test"]
    assert sal["models"] == {"reference": "TRTR seed 0", "synthetic": "TSTR seed 0",
                             "baseline": "real-trained seed 1, trained for this check with the TRTR recipe"}  # quick: 1 seed
    assert sum(g["n"] for g in sal["per_group"].values()) == sal["images"] == sal["overall"]["n"]
    assert set(sal["per_group"]) <= {*PHANTOM_CLASSES, "no positive label"}
    for entry in sal["per_group"].values():
        assert {"synthetic", "baseline", "paired"} <= set(entry) and entry["paired"]["n"] <= entry["n"]
        assert {"spearman_mean", "spearman_median", "iou_mean", "iou_median", "defined"} <= set(entry["synthetic"])
    assert sal["model_seeds"] == {"synthetic": 1, "baseline": 1}
    assert sal["iou_chance"] == pytest.approx(0.1 / 1.9) and set(sal["undefined"]) == {"synthetic", "baseline", "reference"}
    assert sal["verdict"]["check"] == "feature importance (Grad-CAM)"
    assert any("saliency: Grad-CAM maps" in k for k in copies["timings"])
    assert any("saliency: second real-trained classifier" in k for k in copies["timings"])
    page = Path(copies["report"]).read_text()
    assert "Feature importance: do the models look at the same regions?" in page and 'alt="saliency grid"' in page
    metrics, _, out = independent  # utility skipped: nothing to compare, and no real images in the report
    assert "utility stage was skipped" in metrics["saliency"]["skipped"]
    assert metrics["saliency"]["verdict"]["level"] == "n/a"


def test_saliency_averages_the_utility_stages_seeds_without_training_an_extra_model(real, tmp_path):
    """Two utility seeds: TSTR seeds 0 and 1 against the reference, TRTR seed 1 as the baseline (no extra model)."""
    imgs = render_phantom(120, SIZE, seed=3, start=400_000)
    syn = (np.round(imgs.images * 255).astype(np.uint8), imgs.labels, PHANTOM_CLASSES)
    settings = {**TINY, "utility": {**TINY["utility"], "seeds": [0, 1]}, "saliency": {"images": 40, "grid_rows": 2}}
    m = evaluate(real.path, syn, tmp_path / "out", quick=True, device="cpu", settings=settings, quiet=True)
    sal = m["saliency"]
    assert sal["models"] == {"reference": "TRTR seed 0", "synthetic": "TSTR seeds 0, 1",
                             "baseline": "TRTR seed 1, from the utility stage"}  # fmt: skip
    assert sal["model_seeds"] == {"synthetic": 2, "baseline": 1} and sal["images"] == 40
    assert not any("second real-trained classifier" in k for k in m["timings"])
    assert any("Grad-CAM maps (40 real test images, 4 models)" in k for k in m["timings"])


def test_report_is_self_contained_and_states_verdicts(copies, independent):
    page = Path(copies["report"]).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for text in ("Useful?", "Realistic?", "Private?", "FAIL", "How the verdicts are decided", "held-out 1st percentile"):
        assert text in page
    assert page.count("data:image/png;base64,") >= 7
    assert "This report shows real training images" in page
    assert 'alt="ROC curves per class"' in page and "The TRTR classifier of seed 0 is the one saved" in page
    metrics, output, out = independent
    shared = (out / "report.html").read_text()
    assert "the report was made without real images" in shared
    assert "resized to 32 px" in " ".join(metrics["data"]["notes"])  # rendered at 40 px
    assert "Private?" in output and "report:" in output
    rows = summary_rows(metrics)
    assert [r[0] for r in rows] == ["Useful?", "Realistic?", "Private?"]


# ------------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_early_with_one_line(real, tmp_path):
    imgs = np.zeros((30, 1, SIZE, SIZE), np.uint8)
    labels = np.zeros((30, 2), np.float32)
    labels[:5, 1] = 1
    weights = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, weights)
    cases = [
        ((imgs, labels, ["Cardiomegaly", "Fracture"]), {}, DataError, "Fracture .5 images. are not in the real set"),
        ((imgs[:5], labels[:5], ["Cardiomegaly", "Effusion"]), {}, DataError, "needs at least 20"),
        (tmp_path / "missing", {}, DataError, "not found"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"size": 64}, ConfigError, "holds 32 px"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"settings": {"epochs": 3}}, ConfigError, "unknown evaluation"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"classes": ["Hernia"]}, ConfigError, "not in the real set"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"device": "tpu"}, ConfigError, "--device"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"feature_weights": weights}, ConfigError, "not an Inception"),
        ((imgs, labels, ["Cardiomegaly", "Effusion"]), {"feature_weights": tmp_path / "no.pt"}, ConfigError,
         "never downloads"),
    ]
    for synthetic, kwargs, error, message in cases:
        with pytest.raises(error, match=message) as info:
            evaluate(real.path, synthetic, tmp_path / "out", quick=True, quiet=True, **kwargs)
        assert "\n" not in str(info.value)
    nan = np.full((25, 1, SIZE, SIZE), np.nan, np.float32)
    with pytest.raises(DataError, match="NaN"):
        load_synthetic((nan, np.zeros((25, 1)), ["Nodule"]), PHANTOM_CLASSES, SIZE, 1, quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a synthetic set"):
        open_synthetic(tmp_path / "empty")


def test_loader_resizes_converts_and_aligns_with_notes():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (24, 3, 48, 40), dtype=np.uint8)
    labels = np.zeros((24, 2), np.float32)
    labels[::3, 0] = 1
    syn = load_synthetic((rgb, labels, ["nodule", "Mass"]), PHANTOM_CLASSES, SIZE, 1, quiet=True)
    assert syn.images.shape == (24, 1, SIZE, SIZE) and syn.images.dtype == np.uint8
    notes = " ".join(syn.notes)
    assert "converted to grey" in notes and "resized to 32 px" in notes and "ignored: Mass" in notes
    assert "no labels for Cardiomegaly" in notes
    nodule = PHANTOM_CLASSES.index("Nodule")
    assert (syn.labels[:, nodule] == labels[:, 0]).all() and np.isnan(syn.labels[:, 0]).all()


def test_align_labels_folder_combinations_and_no_finding():
    folders = ["Cardiomegaly", "Cardiomegaly+Effusion", "No Finding"]
    onehot = np.eye(3, dtype=np.float32)
    out, notes = align_labels(folders, onehot, ["Cardiomegaly", "Effusion", "Nodule"], exclusive=True)
    np.testing.assert_array_equal(out, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert any("Nodule" in n and "negatives" in n for n in notes)


def test_open_real_notes_when_the_generator_used_other_data(real, tmp_path):
    tc = {"data": "phantom?n=999", "split_seed": 3, "size": 64}
    ds, notes = open_real(str(real.path), None, None, tc, lambda: SIZE, tmp_path, True)
    assert ds.size == SIZE and len(notes) == 3
    assert "not the ones the generator saw" in notes[0] and "seed 0" in notes[1] and "64 px" in notes[2]
    same = {"data": "phantom?n=480", "split_seed": 0, "size": SIZE}
    assert open_real(str(real.path), None, None, same, lambda: SIZE, tmp_path, True)[1] == []
    moved = {"data": str(tmp_path / "gone" / "cache"), "split_seed": 0, "size": SIZE}  # a moved training cache
    assert "could not check" in open_real(str(real.path), None, None, moved, lambda: SIZE, tmp_path, True)[1][0]


def test_align_labels_leaves_out_known_classes_that_are_not_evaluated():
    labels = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    out, notes = align_labels(["Nodule", "Effusion"], labels, ["Nodule"], False, known=list(PHANTOM_CLASSES))
    np.testing.assert_array_equal(out, [[1], [0], [1]])
    assert notes == []
    with pytest.raises(DataError, match="Effusion"):  # without `known`, Effusion is a class the real set lacks
        align_labels(["Nodule", "Effusion"], labels, ["Nodule"], False)
    with pytest.raises(DataError, match="Fracture"):
        align_labels(["Nodule", "Fracture"], labels, ["Nodule"], False, known=list(PHANTOM_CLASSES))


def test_members_leave_out_training_images_the_generator_never_saw(real):
    info = members(real, {"classes": ["Nodule", "Effusion"]})
    table = real.index.iloc[real.rows("train")]
    only_other = (table[["Nodule", "Effusion"]].sum(axis=1) == 0) & (table[list(PHANTOM_CLASSES)].sum(axis=1) > 0)
    assert only_other.any() and np.array_equal(info.seen, ~only_other.to_numpy()) and info.known
    assert f"{int(only_other.sum())} real training images" in info.note
    everything = members(real, {"classes": None})
    assert everything.seen is None and everything.known and everything.note is None
    assert members(real, {"classes": list(PHANTOM_CLASSES)}).seen is None


def test_members_say_when_they_cannot_tell_which_images_the_generator_saw(real, monkeypatch):
    unknown = members(real, None)  # a synthetic set that does not record its generator's training data
    assert unknown.seen is None and not unknown.known and "every real training image counts" in unknown.note

    def refuse(*args, **kwargs):
        raise DataError("class selection failed")

    monkeypatch.setattr("medsyn.evaluate.real.select_classes", refuse)
    failed = members(real, {"classes": ["Nodule"]})
    assert failed.seen is None and not failed.known and "class selection failed" in failed.note


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"classifier": {"epochs": "10"}}, "ClassifierConfig.epochs must be an integer, got '10'"),
        ({"reid": {"epochs": 2.5}}, "ReidConfig.epochs must be an integer"),
        ({"pixel_size": "64"}, "EvalSettings.pixel_size must be an integer"),
        ({"utility": {"seeds": [0, "a"]}}, r"UtilityConfig.seeds\[1\] must be an integer"),
        ({"classifier": [1]}, "'classifier' must be a mapping"),
        ({"classifier": {"augment": "no"}}, "augment must be true or false"),
        ({"classifier": {"epochs": True}}, "epochs must be an integer, got True"),
        ({"saliency": {"images": -1}}, "saliency: images must be >= 0"),
        ({"saliency": {"top_fraction": 1.5}}, r"saliency.top_fraction must be in \(0, 1\)"),
        ({"saliency": {"image": 5}}, r"unknown SaliencyConfig key\(s\) \['image'\]"),
    ],
)
def test_settings_of_the_wrong_type_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        EvalSettings.make(True, 0, "cpu", False, settings)
    assert EvalSettings.make(True, 0, "cpu", False, {"classifier": {"epochs": 3.0}}).utility.classifier.epochs == 3


def test_the_public_entry_point_is_importable_from_the_package():
    import medsyn.evaluate

    assert medsyn.evaluate.evaluate is evaluate and "evaluate" in medsyn.evaluate.__all__
    with pytest.raises(AttributeError):
        medsyn.evaluate.no_such_name  # noqa: B018


def test_quick_explains_fewer_images_and_saliency_can_be_switched_off():
    assert EvalSettings.make(True, 0, "cpu", False).saliency.images == 100
    assert EvalSettings.make(False, 0, "cpu", False).saliency.images == 300
    assert EvalSettings.make(True, 0, "cpu", False, {"saliency": {"images": 0}}).saliency.images == 0


def test_a_class_the_synthetic_set_lacks_is_not_scored(real, tmp_path):
    """A --balance set holds no image of the largest group: TSTR cannot learn that class, so it is left out with
    the reason (and the utility stage says so when no class is left), instead of scoring a classifier that never
    saw a positive."""
    imgs = render_phantom(120, SIZE, seed=4, start=500_000)
    images, labels = np.round(imgs.images * 255).astype(np.uint8), imgs.labels.copy()
    labels[:, 0] = 0  # no positive of the first class
    settings = {**TINY, "saliency": {"images": 0}}
    m = evaluate(real.path, (images, labels, PHANTOM_CLASSES), tmp_path / "one", quick=True, device="cpu",
                 settings=settings, quiet=True)  # fmt: skip
    u = m["utility"]
    assert PHANTOM_CLASSES[0] not in u["classes"] and set(u["classes"]) == set(PHANTOM_CLASSES[1:])
    assert any(n.startswith(f"not scored (fewer than 5 positive or negative synthetic images): {PHANTOM_CLASSES[0]}")
               and "--balance" in n for n in u["notes"])  # fmt: skip
    labels[:] = 1  # every class positive in every image: none can be learned
    m = evaluate(real.path, (images, labels, PHANTOM_CLASSES), tmp_path / "none", quick=True, device="cpu",
                 settings=settings, quiet=True)  # fmt: skip
    assert "synthetic images" in m["utility"]["skipped"] and m["verdicts"]["useful"]["level"] == "n/a"
