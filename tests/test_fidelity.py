"""Fidelity metrics against independent references (scipy, numpy, the prdc package) and feature extractors."""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings

import numpy as np
import prdc
import pytest
import scipy.stats
import torch
from monai.networks.nets import DenseNet121
from torch import nn

from medsyn.errors import CheckpointError, ConfigError, DataError
from medsyn.evaluate import fidelity as fidelity_mod
from medsyn.evaluate.features import (
    ClassifierFeatures,
    FeatureExtractor,
    FeatureSpace,
    PixelFeatures,
    TorchXRayVisionFeatures,
)
from medsyn.evaluate.fidelity import (
    _real_halves,
    compute_fid,
    compute_kid,
    compute_prdc,
    frechet_distance,
    per_class_fid,
)
from medsyn.evaluate.inception import FIDInceptionV3, InceptionFeatures
from medsyn.evaluate.intensity import histogram_divergence

SPACE = FeatureSpace("test-features", "random arrays")


def _gauss(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def _reference_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Independent route: Tr sqrt(S1 S2) = sum of sqrt eigenvalues of S1^1/2 S2 S1^1/2 (symmetric PSD)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.clip(scipy.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


# ----------------------------------------------------------------------------------------------- FID


def test_fid_matches_independent_eigen_computation() -> None:
    x, y = _gauss(400, 16, 0), _gauss(300, 16, 1, shift=0.3, scale=1.5)
    res = compute_fid(x, y, SPACE)
    assert res.fid == pytest.approx(_reference_frechet(x, y), rel=1e-8)
    assert (res.backbone, res.implementation, res.n_real, res.n_synthetic, res.dim) == (
        "test-features",
        "random arrays",
        400,
        300,
        16,
    )


def test_fid_of_identical_sets_is_zero() -> None:
    x = _gauss(200, 8, 2)
    assert abs(compute_fid(x, x, SPACE, baseline=False).fid) < 1e-8


def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
    expected = mu2 @ mu2 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_shifted_gaussians_is_squared_shift() -> None:
    d, n, shift = 4, 20000, 0.5
    res = compute_fid(_gauss(n, d, 3), _gauss(n, d, 4, shift=shift), SPACE, baseline=False)
    assert res.fid == pytest.approx(d * shift**2, abs=0.02)


def test_fid_rank_deficient_features_stay_finite_and_noted() -> None:
    x, y = _gauss(12, 30, 5), _gauss(12, 30, 6)  # N < D: singular covariances
    res = compute_fid(x, y, SPACE, baseline=False)
    assert np.isfinite(res.fid) and res.fid > 0
    assert any("rank-deficient" in n for n in res.notes)


def test_fid_baseline_same_n_and_disjoint_real_halves() -> None:
    real, syn_good, syn_bad = _gauss(600, 8, 7), _gauss(200, 8, 8), _gauss(200, 8, 9, shift=1.0)
    good = compute_fid(real, syn_good, SPACE, baseline_repeats=2)
    bad = compute_fid(real, syn_bad, SPACE, baseline_repeats=2)
    assert good.baseline is not None and good.baseline.n == 200 and good.baseline.repeats == 2
    assert good.baseline.split == "by image" and good.baseline.n_requested == 200
    # Same distribution: the synthetic FID at n is within noise of the real-vs-real floor; shifted is not.
    assert good.baseline.synthetic_vs_real < 3 * good.baseline.real_vs_real + 0.1
    assert bad.baseline.synthetic_vs_real > 10 * bad.baseline.real_vs_real
    small = compute_fid(_gauss(15, 4, 1), _gauss(15, 4, 2), SPACE)
    assert small.baseline is None and any("baseline skipped" in n for n in small.notes)
    json.dumps(good.to_dict(), allow_nan=False)


def _patients(n_patients: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per` near-duplicate images (tiny noise around a patient centre) per patient, and the patient ids."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_patients), per)
    return rng.normal(size=(n_patients, 4))[ids] + 0.05 * rng.normal(size=(len(ids), 4)), ids


def test_fid_baseline_by_patient_keeps_patients_on_one_side() -> None:
    real, ids = _patients(60, 5, 0)
    syn = _gauss(150, 4, 1)  # independent draws from the patient-centre distribution
    by_image = compute_fid(real, syn, SPACE).baseline
    by_patient = compute_fid(real, syn, SPACE, real_groups=ids).baseline
    assert by_image is not None and by_patient is not None
    assert (by_image.split, by_image.n_patients) == ("by image", None) and "both sides" in by_image.note
    assert by_patient.split == "by patient" and by_patient.n == by_patient.n_requested == 150
    assert by_patient.n_patients == 60
    # A patient on both sides pairs near-duplicates across the halves: the by-image floor is far too low.
    assert by_patient.real_vs_real > 3 * by_image.real_vs_real
    # So a generator as good as new patients looks worse than real under the by-image floor, not by patient.
    q_image, q_patient = (b.synthetic_vs_real / b.real_vs_real for b in (by_image, by_patient))
    assert q_patient < 1 < q_image
    for seed in range(20):  # uneven patients, ids not 0..P-1: never a patient on both sides, always n per side
        rng = np.random.default_rng(seed)
        codes = np.unique(rng.integers(0, rng.integers(2, 40), size=rng.integers(20, 200)), return_inverse=True)[1]
        n, halves = _real_halves(len(codes), codes, len(codes) // 2, 3, rng)
        for a, b in halves:
            assert len(a) == len(b) == n and not set(codes[a]) & set(codes[b])
    json.dumps(compute_fid(real, syn, SPACE, real_groups=ids.astype(str)).to_dict(), allow_nan=False)


def test_fid_baseline_by_patient_fallback_is_recorded() -> None:
    real, syn = _gauss(100, 4, 0), _gauss(50, 4, 1)
    one_big = np.r_[np.zeros(70, int), 1 + np.arange(30)]  # 70 images of one patient: no 50 / 50 split
    base = compute_fid(real, syn, SPACE, real_groups=one_big).baseline
    assert base is not None and 10 <= base.n <= 30 and base.n_requested == 50
    assert "n reduced from 50" in base.note and "largest with 70 of 100" in base.note
    res = compute_fid(real, syn, SPACE, real_groups=np.r_[np.zeros(95, int), 1 + np.arange(5)])
    assert res.baseline is None and any(n.startswith("baseline skipped: at most") for n in res.notes)
    with pytest.raises(DataError, match=r"FID real_groups: patient ids must have shape \(100,\)"):
        compute_fid(real, syn, SPACE, real_groups=one_big[:99])


def test_fid_records_scipy_ill_conditioning_instead_of_warning() -> None:
    rng = np.random.default_rng(0)
    r, s = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    r[:, 0] = s[:, 0] = 0.0  # a constant feature: the covariance product is singular
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a LinAlgWarning reaching the caller would fail here
        res = compute_fid(r, s, SPACE)
    assert res.ill_conditioned and any("ill-conditioned" in n for n in res.notes) and np.isfinite(res.fid)
    assert not compute_fid(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), SPACE).ill_conditioned


def test_fid_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="at least 10 synthetic"):
        compute_fid(_gauss(50, 4, 0), _gauss(3, 4, 1), SPACE)
    bad = _gauss(50, 4, 0)
    bad[7, 2] = np.nan
    with pytest.raises(DataError, match="NaN/inf"):
        compute_fid(bad, _gauss(50, 4, 1), SPACE)
    with pytest.raises(DataError, match="dimensions differ"):
        compute_fid(_gauss(50, 4, 0), _gauss(50, 5, 1), SPACE)
    with pytest.raises(ConfigError, match="feature space"):
        compute_fid(_gauss(50, 4, 0), _gauss(50, 4, 1), "inception")  # type: ignore[arg-type]


def test_fid_without_a_finite_square_root_is_an_error_not_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity_mod.scipy.linalg, "sqrtm", lambda a: np.full_like(a, np.nan))
    with pytest.raises(DataError, match="no finite square root"):
        compute_fid(_gauss(50, 4, 0), _gauss(50, 4, 1), SPACE)


# ----------------------------------------------------------------------------------------------- KID


def _reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / d + 1) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_direct_unbiased_mmd() -> None:
    x, y = _gauss(40, 6, 0), _gauss(40, 6, 1, shift=0.4)
    # One subset of the full size is a permutation of both sets: the estimate is then exact.
    res = compute_kid(x, y, SPACE, n_subsets=1, subset_size=40)
    assert res.kid == pytest.approx(_reference_mmd2(x, y), rel=1e-10)
    assert res.subset_size == 40 and res.kid_std == 0


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted() -> None:
    same = compute_kid(_gauss(300, 8, 0), _gauss(300, 8, 1), SPACE, n_subsets=20, subset_size=100)
    shifted = compute_kid(_gauss(300, 8, 0), _gauss(300, 8, 1, shift=0.5), SPACE, n_subsets=20, subset_size=100)
    assert abs(same.kid) < 3 * same.kid_std + 1e-3
    assert shifted.kid > 3 * shifted.kid_std > 0


# ---------------------------------------------------------------------------------------------- PRDC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prdc_equals_prdc_package(seed: int) -> None:
    real = _gauss(220, 10, seed)
    fake = _gauss(180, 10, seed + 100, shift=0.3, scale=1.3)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    got = compute_prdc(real, fake, SPACE, k=5)
    assert {m: getattr(got, m) for m in expected} == {m: float(v) for m, v in expected.items()}
    assert got.k == 5 and got.n_real == 220 and got.n_synthetic == 180


def test_prdc_with_duplicates_and_small_blocks_equals_prdc_package() -> None:
    rng = np.random.default_rng(4)
    real = np.repeat(rng.normal(size=(30, 6)), 3, axis=0)  # every real point has two exact twins
    fake = np.concatenate([real[:20], rng.normal(size=(40, 6))])  # some exact copies
    with contextlib.redirect_stdout(io.StringIO()):
        expected = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=3)
    got = compute_prdc(real, fake, SPACE, k=3)
    assert {m: getattr(got, m) for m in expected} == pytest.approx(dict(expected), abs=1e-12)


def test_prdc_same_n_compares_equal_sizes() -> None:
    """A synthetic set 4x the real one covers more by number alone; same_n compares equal, seeded subsets."""
    real, fake = _gauss(200, 6, 0), _gauss(800, 6, 1, scale=0.5)  # a narrower set: coverage should be low
    unequal = compute_prdc(real, fake, SPACE, k=5)
    equal = compute_prdc(real, fake, SPACE, k=5, same_n=True, seed=3)
    assert (equal.n_real, equal.n_synthetic) == (200, 200)
    assert unequal.coverage > equal.coverage + 0.1
    assert compute_prdc(real, fake, SPACE, k=5, same_n=True, seed=3) == equal
    assert compute_prdc(real, fake, SPACE, k=5, same_n=True, seed=4) != equal
    small = compute_prdc(real[:120], real[120:], SPACE, k=5, same_n=True)  # 120 vs 80: the real side is cut
    assert (small.n_real, small.n_synthetic) == (80, 80)


def test_prdc_needs_more_than_k_images() -> None:
    with pytest.raises(DataError, match="at least 6 synthetic"):
        compute_prdc(_gauss(20, 3, 0), _gauss(5, 3, 1), SPACE, k=5)


# ------------------------------------------------------------------------------------- per-class FID


def test_per_class_fid_groups_by_label_and_skips_small_classes() -> None:
    real, syn = _gauss(300, 6, 0), _gauss(300, 6, 1)
    rl = np.zeros((300, 3))
    sl = np.zeros((300, 3))
    rl[:150, 0] = sl[:150, 0] = 1  # class a: 150 each
    rl[100:200, 1], sl[100:130, 1] = 1, 1  # class b: 100 real, 30 synthetic -> skipped
    rl[:, 2] = np.nan  # class c: masked everywhere -> skipped
    res = per_class_fid(real, rl, syn, sl, SPACE, ["a", "b", "c"], min_images=50)
    a, b, c = res
    assert a.result is not None and a.skipped is None and (a.n_real, a.n_synthetic) == (150, 150)
    assert a.result.fid == pytest.approx(_reference_frechet(real[:150], syn[:150]), rel=1e-8)
    assert b.result is None and "at least 50 real and 50 synthetic images, has 100 and 30" in b.skipped
    assert c.result is None and c.n_real == 0
    ids = per_class_fid(real, rl[:, 0] * 0 + (np.arange(300) % 2), syn, np.arange(300) % 2, SPACE, ["x", "y"])
    assert [r.n_real for r in ids] == [150, 150]
    # Patient ids are indexed per class: class a (rows 0-149) holds patients 0-49 of 100.
    grouped = per_class_fid(real, rl, syn, sl, SPACE, ["a", "b", "c"], real_groups=np.arange(300) // 3)
    base = grouped[0].result.baseline  # type: ignore[union-attr]
    assert base is not None and (base.split, base.n_patients, base.n) == ("by patient", 50, 75)
    with pytest.raises(DataError, match="per-class FID real_groups"):
        per_class_fid(real, rl, syn, sl, SPACE, ["a", "b", "c"], real_groups=np.arange(5))
    json.dumps([r.to_dict() for r in res], allow_nan=False)


# ----------------------------------------------------------------------------------------- histograms


def test_histogram_divergence_matches_scipy_entropy() -> None:
    rng = np.random.default_rng(0)
    real = (rng.beta(2, 5, size=(6, 1, 16, 16)) * 255).astype(np.uint8)
    syn = rng.beta(2, 3, size=(5, 1, 16, 16)).astype(np.float32)
    res = histogram_divergence(real, syn, bins=32, alpha=0.5)
    p = np.bincount(real.ravel().astype(np.int64) * 32 // 256, minlength=32) + 0.5
    q = np.bincount(np.minimum((syn.ravel() * 32).astype(np.int64), 31), minlength=32) + 0.5
    p, q = p / p.sum(), q / q.sum()
    assert res.kl_real_synthetic == pytest.approx(scipy.stats.entropy(p, q), rel=1e-9)
    assert res.kl_synthetic_real == pytest.approx(scipy.stats.entropy(q, p), rel=1e-9)
    assert res.js == pytest.approx(scipy.spatial.distance.jensenshannon(p, q) ** 2, rel=1e-9)
    assert res.symmetric_kl == pytest.approx((res.kl_real_synthetic + res.kl_synthetic_real) / 2)
    assert histogram_divergence(real, real).symmetric_kl == 0
    assert len(res.to_dict(arrays=True)["real_histogram"]) == 32 and "real_histogram" not in res.to_dict()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        histogram_divergence(real, syn * 2 - 1)


# --------------------------------------------------------------------------------------------- features


def _images(n: int = 3, size: int = 32, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(n, channels, size, size)).astype(np.float32)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(self.body(x), 8).flatten(1))


def test_classifier_features_use_the_penultimate_layer() -> None:
    torch.manual_seed(0)
    net = _TinyNet()
    ext = ClassifierFeatures(net, weights="tiny.pt sha256 abc", batch_size=2)
    assert isinstance(ext, FeatureExtractor) and ext.dim == 256 and "input of fc" in ext.implementation
    x = _images()
    feats = ext(x)
    with torch.no_grad():
        ref = nn.functional.adaptive_avg_pool2d(net.body(torch.from_numpy(x)), 8).flatten(1)
    assert feats.dtype == np.float64 and feats.shape == (3, 256)
    # float32 convolutions round differently by batch size (2 here, 3 in ref): atol for relu outputs near 0
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ext((x * 255).round().astype(np.uint8)), feats, atol=0.02)  # uint8 accepted

    class WithFeatures(_TinyNet):
        def features(self, x: torch.Tensor) -> torch.Tensor:  # 4-D: pooled by the extractor
            return self.body(x)

    ext2 = ClassifierFeatures(WithFeatures(), image_shape=(1, 32, 32))
    assert ext2.dim == 4 and ext2(x).shape == (3, 4) and "features()" in ext2.implementation
    with pytest.raises(ConfigError, match="image_shape"):
        ClassifierFeatures(WithFeatures())


def test_classifier_features_nan_output_is_an_error() -> None:
    net = _TinyNet()
    with torch.no_grad():
        net.body[0].bias.fill_(float("nan"))
    with pytest.raises(DataError, match="NaN/inf"):
        ClassifierFeatures(net)(_images())


@pytest.mark.slow  # one DenseNet121 forward: ~1 s alone, much longer on a busy CPU
def test_torchxrayvision_weights_load_into_monai_densenet(tmp_path) -> None:
    torch.manual_seed(0)
    src = DenseNet121(spatial_dims=2, in_channels=1, out_channels=18).eval()
    # torchxrayvision / torchvision key names: denselayerN.norm1 (no `.layers`), `classifier.`.
    state = {
        re.sub(r"\.layers\.(norm|relu|conv)([12])\.", r".\1\2.", k).replace("class_layers.out.", "classifier."): v
        for k, v in src.state_dict().items()
    }
    state["op_threshs"] = torch.zeros(18)
    torch.save(state, tmp_path / "xrv.pt")
    ext = TorchXRayVisionFeatures(tmp_path / "xrv.pt", resolution=32)
    loaded = ext.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in src.state_dict().items())
    x = _images(1, 16)
    xi = nn.functional.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        ref = src.class_layers[:-1](src.features(xi * 2048 - 1024))
    np.testing.assert_allclose(ext(x), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert "sha256" in ext.implementation and ext.dim == 1024


@pytest.mark.slow  # one Inception-v3 forward at 299 px
def test_inception_loads_pytorch_fid_key_names(tmp_path) -> None:
    state = FIDInceptionV3().state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as in the 2015 file
    state |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(state, tmp_path / "pt_inception.pth")
    feats = InceptionFeatures(tmp_path / "pt_inception.pth", batch_size=1)(_images(1, 16))
    assert feats.shape == (1, 2048) and np.isfinite(feats).all()


def test_missing_or_wrong_weights_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found at .*never downloads"):
        TorchXRayVisionFeatures(tmp_path / "absent.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        InceptionFeatures(tmp_path / "absent.pth")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        InceptionFeatures(tmp_path / "junk.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        InceptionFeatures(tmp_path / "other.pt")


def test_pixel_features_downsample_by_area() -> None:
    x = _images(2, 32)
    feats = PixelFeatures(size=8)(x)
    np.testing.assert_allclose(feats, x.reshape(2, 1, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(2, -1), rtol=1e-6)
    with pytest.raises(DataError, match="at least 64 px"):
        PixelFeatures(size=64)(x)
