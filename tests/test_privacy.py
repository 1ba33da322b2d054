"""Nearest-neighbour search against sklearn/brute force, and the privacy checks on phantom-like images."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.stats import betabinom
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from conftest import SHARED_DATA, needs_data
from medsyn.errors import ConfigError, DataError
from medsyn.evaluate import neighbors
from medsyn.evaluate.features import FeatureSpace, PixelFeatures
from medsyn.evaluate.neighbors import ball_counts, knn
from medsyn.evaluate.privacy import (
    DCR_TEST,
    distance_to_closest_record,
    membership_inference,
    nearest_patient_shares,
    precedence_test,
)
from medsyn.evaluate.privacy.density import density_ratio_inference, with_density_split_shift
from medsyn.evaluate.privacy.membership import MIAResult, attack_result, with_split_shift
from medsyn.evaluate.verdicts import Verdict, concentration_context, concentration_verdict, dcr_verdict, mia_verdict

SPACE = FeatureSpace("test-features", "random arrays")


def _brute(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))


# ----------------------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("block_bytes", [4 * 37 * 53, neighbors.DEFAULT_BLOCK_BYTES])
def test_knn_equals_sklearn(block_bytes: int) -> None:
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(150, 24)), rng.normal(size=(230, 24))
    got = knn(q, r, k=5, block_bytes=block_bytes)
    dist, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(r).kneighbors(q)
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_allclose(got.distances, dist, rtol=1e-12, atol=1e-12)
    # Leave-one-out within one set, as sklearn's kneighbors() without a query.
    got = knn(r, r, k=3, exclude_self=True, block_bytes=block_bytes)
    dist, idx = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(r).kneighbors()
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_allclose(got.distances, dist, rtol=1e-12, atol=1e-12)


def test_knn_exact_far_from_origin_and_for_duplicates() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(200, 16)) + 1e4  # large offset: the GEMM trick alone would cancel badly
    q = np.concatenate([r[:20], r[20:40] + 1e-6])  # exact copies and near-copies
    got = knn(q, r, k=2)
    ref = _brute(q, r)
    np.testing.assert_array_equal(got.distances[:20, 0], 0.0)
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(40))
    np.testing.assert_allclose(got.distances, np.sort(ref, axis=1)[:, :2], rtol=1e-9, atol=1e-12)


def test_knn_near_ties_fall_back_to_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # References on a sphere around each query, radii differing by 1e-9: float32 cannot order them.
    rng = np.random.default_rng(2)
    dirs = rng.normal(size=(300, 8))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    r = dirs * (1 + 1e-9 * rng.permutation(300))[:, None]
    q = np.zeros((3, 8))
    dtypes = []
    original = neighbors._candidates
    monkeypatch.setattr(neighbors, "_candidates", lambda space, *a: dtypes.append(space.dtype) or original(space, *a))
    got = knn(q, r, k=3)
    assert neighbors.torch.float64 in dtypes
    np.testing.assert_array_equal(got.indices, np.argsort(_brute(q, r), axis=1)[:, :3])


def test_ball_counts_equal_brute_force() -> None:
    rng = np.random.default_rng(3)
    p, c = rng.normal(size=(120, 10)), rng.normal(size=(90, 10))
    radii = rng.uniform(2.0, 4.0, size=90)
    d = _brute(p, c)
    radii[:5] = d[0, :5]  # exact ties: strict '<' must exclude them
    got = ball_counts(p, c, radii, block_bytes=4 * 17 * 23)
    inside = d < radii[None, :]
    np.testing.assert_array_equal(got.counts, inside.sum(1))
    np.testing.assert_array_equal(got.covered, inside.any(0))


def test_neighbour_input_errors() -> None:
    with pytest.raises(DataError, match="dimensions differ"):
        knn(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(DataError, match="NaN/inf"):
        knn(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(DataError, match="at least 4 references"):
        knn(np.zeros((3, 4)), np.zeros((3, 4)), k=3, exclude_self=True)
    with pytest.raises(ConfigError, match="same array"):
        knn(np.zeros((3, 4)), np.zeros((5, 4)), exclude_self=True)


# --------------------------------------------------------------------------------------------- privacy


def _phantoms(n: int, seed: int, size: int = 16) -> np.ndarray:
    """Chest-radiograph-like phantoms (N, 1, size, size) in [0, 1]: lungs, heart, gradient, texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    img = np.broadcast_to(0.65 + 0.1 * yy, (n, size, size)).copy()
    for side in (-1, 1):
        cx = side * 0.45 + rng.normal(0, 0.05, (n, 1, 1))
        ax, ay = rng.uniform(0.25, 0.35, (n, 1, 1)), rng.uniform(0.5, 0.7, (n, 1, 1))
        img -= 0.35 * (((xx - cx) / ax) ** 2 + (yy / ay) ** 2 < 1)
    heart = rng.uniform(0.2, 0.3, (n, 1, 1))
    img += 0.2 * ((xx - 0.1) ** 2 + (yy - 0.3) ** 2 < heart**2)
    img += rng.normal(0, 0.04, img.shape)
    return np.clip(img, 0, 1)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def phantom_sets() -> dict[str, np.ndarray]:
    pix = PixelFeatures(size=16)
    train, holdout = _phantoms(300, 0), _phantoms(200, 1)
    rng = np.random.default_rng(9)
    copies = np.clip(train + rng.normal(0, 0.01, train.shape), 0, 1).astype(np.float32)
    return {
        "train": pix(train),
        "holdout": pix(holdout),
        "copies": pix(copies),
        "exact": pix(train[:50]),
        "independent": pix(_phantoms(300, 2)),
    }


def test_dcr_flags_perturbed_copies(phantom_sets: dict[str, np.ndarray]) -> None:
    s = phantom_sets
    res = distance_to_closest_record(s["copies"], s["train"], s["holdout"], PixelFeatures(size=16), n_closest=5)
    assert res.fraction_below_p1 > 0.9 and res.pvalue_p1 < 1e-6 and res.n_identical == 0
    assert res.space == "pixels16" and res.n_train == 300 and res.n_holdout == 200
    # Each perturbed copy's nearest training image is its source.
    np.testing.assert_array_equal(res.synthetic_nearest, np.arange(300))
    assert [c["train_index"] for c in res.closest] == [c["synthetic_index"] for c in res.closest]
    assert res.closest[0]["distance"] == res.synthetic_distances.min()
    assert dcr_verdict(res).level == "fail"
    json.dumps(res.to_dict(), allow_nan=False)
    assert "synthetic_distances" not in res.to_dict() and len(res.to_dict(arrays=True)["holdout_distances"]) == 200

    exact = distance_to_closest_record(s["exact"], s["train"], s["holdout"], SPACE)
    assert exact.n_identical == 50 and "identical" in dcr_verdict(exact).reason
    # Still caught with a small held-out set, and when only 10% of the synthetic images are copies.
    small = distance_to_closest_record(s["copies"], s["train"], s["holdout"][:100], SPACE)
    assert small.pvalue_p1 < 1e-6 and dcr_verdict(small).level == "fail"
    mixed = np.concatenate([s["independent"][:270], s["copies"][:30]])
    assert dcr_verdict(distance_to_closest_record(mixed, s["train"], s["holdout"][:100], SPACE)).level == "fail"


def test_dcr_passes_independent_samples(phantom_sets: dict[str, np.ndarray]) -> None:
    s = phantom_sets
    res = distance_to_closest_record(s["independent"], s["train"], s["holdout"], SPACE)
    assert res.fraction_below_p1 < 0.04 and res.fraction_below_p5 < 0.12
    assert res.median_synthetic == pytest.approx(res.median_holdout, rel=0.1)
    assert dcr_verdict(res).level == "pass"
    # The recorded test: name, statistic (counts below), p-values, both sample sizes.
    assert res.test == DCR_TEST and (res.n_synthetic, res.n_holdout) == (300, 200)
    assert res.count_below_p1 == round(300 * res.fraction_below_p1) and res.expected_p1 == 3 / 201
    assert res.pvalue_p1 == betabinom.sf(res.count_below_p1 - 1, 300, 3, 198)


def test_nearest_patient_concentration_is_a_tested_verdict_without_ids(phantom_sets: dict[str, np.ndarray]) -> None:
    s = phantom_sets
    ids = np.array([f"p{i // 3:03d}" for i in range(300)])  # 100 patients of 3 images each
    ids[:30] = "heavy"  # one patient with 10% of the training images
    drawn = s["copies"][np.arange(200) % 30]  # a generator drawing that patient's look again and again
    res = distance_to_closest_record(drawn, s["train"], s["holdout"], SPACE, train_patient_ids=ids)
    c = res.nearest_patient
    assert c["synthetic"] == 1.0 and c["training"] == 0.1 and c["holdout"] < 0.3
    assert c["pvalue"] < 0.01 and "permutation test" in c["test"]
    verdict = concentration_verdict(res)
    assert verdict.level == "fail" and "permutation test p" in verdict.reason
    # the copies lie CLOSE to that patient's images, so the hub-controlled statistic fails too
    assert c["close_synthetic"] == 1.0 and c["close_pvalue"] < 0.01 and c["close_same_patient"]
    assert "reproduces one patient's images closely" in verdict.reason
    assert "heavy" not in json.dumps(res.to_dict())  # shares only, never the id
    fair = distance_to_closest_record(s["independent"], s["train"], s["holdout"], SPACE, train_patient_ids=ids)
    assert fair.nearest_patient["synthetic"] < 0.3 and fair.nearest_patient["pvalue"] > 0.05
    assert concentration_verdict(fair).level == "pass"
    assert distance_to_closest_record(s["independent"], s["train"], s["holdout"], SPACE).nearest_patient is None
    singles = np.array([f"p{i}" for i in range(300)])  # one image per patient: image hubness, not a patient
    lone = distance_to_closest_record(drawn, s["train"], s["holdout"], SPACE, train_patient_ids=singles)
    assert lone.nearest_patient is None and concentration_verdict(lone) is None


def test_a_collapsed_unrealistic_set_near_one_hub_patient_is_a_warn_that_says_hub_not_a_copy(
    phantom_sets: dict[str, np.ndarray],
) -> None:
    """A flat grey "generator" puts almost every image nearest to one training patient (the hub nearest to any
    featureless image), far from it: the plain test alone would read that as one patient reproduced (FAIL)."""
    s = phantom_sets
    ids = np.array([f"p{i // 3:03d}" for i in range(300)])
    rng = np.random.default_rng(3)
    flat = PixelFeatures(size=16)((0.3 + rng.normal(0, 0.02, (200, 1, 16, 16))).astype(np.float32))
    res = distance_to_closest_record(flat, s["train"], s["holdout"], SPACE, train_patient_ids=ids)
    c = res.nearest_patient
    assert c["synthetic"] > 0.9 and c["holdout"] < 0.05 and c["pvalue"] < 0.01  # plain concentration: extreme
    assert c["close_synthetic"] == 0.0 and c["close_pvalue"] > 0.05  # but no synthetic image is close to it
    assert c["top_synthetic_median_distance"] > 3 * c["holdout_median_distance"]
    verdict = concentration_verdict(res)
    assert verdict.level == "warn" and "hub effect" in verdict.reason and "inspect the closest pairs" in verdict.reason
    told = concentration_verdict(res, "the diversity check finds the set collapsed")
    assert told.level == "warn" and "the diversity check finds the set collapsed" in told.reason
    collapsed = Verdict("diversity (pixels)", "fail", "2 modes")
    assert concentration_context(collapsed, {"prdc": {"precision": 0.0, "coverage": 0.01}}) == (
        "the diversity check finds the set collapsed; precision 0.00 and coverage 0.01: the set barely resembles "
        "the real images")
    assert concentration_context(None, {"prdc": {"precision": 0.6, "coverage": 0.7}}) is None


def test_close_concentration_test_is_calibrated_under_the_null() -> None:
    """Nearest patients and distances of synthetic and held-out images from the same law: p_c < 0.05 rarely."""
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(40).astype(str), 5)
    weights = np.linspace(1, 6, len(ids))
    weights /= weights.sum()
    hits = []
    for i in range(40):
        out = nearest_patient_shares(ids, rng.choice(len(ids), 150, p=weights), rng.choice(len(ids), 60, p=weights),
                                     seed=i, permutations=300, syn_distances=rng.gamma(3, 1, 150),
                                     holdout_distances=rng.gamma(3, 1, 60))  # fmt: skip
        hits.append(out["close_pvalue"] < 0.05)
    assert np.mean(hits) <= 0.125


def test_concentration_permutation_test_is_calibrated_under_the_null() -> None:
    """Synthetic and held-out nearest patients drawn from the same skewed law: p < 0.05 in about 5% of draws."""
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40).astype(str), 5)
    weights = np.linspace(1, 6, len(ids))  # some training images are hubs for everyone
    weights /= weights.sum()
    small = [nearest_patient_shares(ids, rng.choice(len(ids), 150, p=weights), rng.choice(len(ids), 60, p=weights),
                                    seed=i, permutations=400)["pvalue"] < 0.05 for i in range(50)]  # fmt: skip
    assert np.mean(small) <= 0.12


def test_precedence_null_law_is_exact() -> None:
    # All C(10, 4) interleavings of 4 synthetic and 6 held-out values are equally likely without copying:
    # X = synthetic values before the j-th held-out one follows BetaBinomial(4, j, 7 - j).
    n, m = 4, 6
    for j in (1, 2, 3):
        counts = np.zeros(n + 1)
        for syn_pos in itertools.combinations(range(n + m), n):
            held = [i for i in range(n + m) if i not in syn_pos]
            counts[sum(p < held[j - 1] for p in syn_pos)] += 1
        np.testing.assert_allclose(counts / counts.sum(), betabinom.pmf(range(n + 1), n, j, m + 1 - j), rtol=1e-12)
    # The interpolated 1st percentile of 100 lies between the 1st and 2nd smallest: j = 2, expected 2/101.
    assert precedence_test(0, 500, 100, 1) == (1.0, 2 / 101)
    # Calibrated at any held-out size: P(p < 0.05) <= 0.05 on copy-free draws (uniform DCRs).
    rng = np.random.default_rng(0)
    for m in (20, 100, 333):
        ho, sy = rng.random((1000, m)), rng.random((1000, 400))
        below = (sy < np.percentile(ho, 1, axis=1)[:, None]).sum(1)
        assert np.mean([precedence_test(int(b), 400, m, 1)[0] < 0.05 for b in below]) <= 0.055


def test_dcr_small_holdout_no_false_alarms() -> None:
    # Synthetic drawn like held-out, 100 held-out images: the old binomial test against a nominal 1% warned
    # or failed in 17 of these 50 draws (25 of 50 with 1000 synthetic images); the precedence test keeps
    # false alarms near its 5% level.
    levels = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        train, held, syn = rng.normal(size=(100, 4)), rng.normal(size=(100, 4)), rng.normal(size=(200, 4))
        levels.append(dcr_verdict(distance_to_closest_record(syn, train, held, SPACE)).level)
    assert levels.count("pass") >= 45  # 48 here; FAIL needs p < 0.01, so about 1 in 100 copy-free draws


def test_membership_inference_copies_vs_independent(phantom_sets: dict[str, np.ndarray]) -> None:
    s = phantom_sets
    leaky = membership_inference(s["copies"], s["train"], s["holdout"], SPACE, n_bootstrap=200)
    assert leaky.auroc > 0.99 and leaky.ci_low > 0.95 and leaky.tpr_at_1pct_fpr > 0.9
    assert mia_verdict(leaky).level == "fail"

    ids_m, ids_n = np.arange(300) // 3, 1000 + np.arange(200) // 2  # several images per patient
    safe = membership_inference(
        s["independent"],
        s["train"],
        s["holdout"],
        SPACE,
        member_ids=ids_m,
        non_member_ids=ids_n,
        n_bootstrap=300,
    )
    assert safe.resampling == "patients" and 0.4 < safe.auroc < 0.6
    assert safe.ci_low < 0.5 < safe.ci_high and mia_verdict(safe).level == "pass"
    # The point estimate is sklearn's AUROC on -distance.
    y = np.r_[np.ones(300), np.zeros(200)]
    score = np.r_[safe.member_scores, safe.non_member_scores]
    assert safe.auroc == roc_auc_score(y, score)


def test_density_ratio_attack_copies_vs_independent(phantom_sets: dict[str, np.ndarray]) -> None:
    """DOMIAS: reference = half of the held-out images, non-members = the other half."""
    s = phantom_sets
    ref, non = s["holdout"][:100], s["holdout"][100:]
    leaky = density_ratio_inference(s["copies"], s["train"], non, ref, SPACE, n_bootstrap=200)
    assert leaky.attack == "density ratio" and leaky.n_synthetic == 300 and leaky.n_non_members == 100
    assert leaky.auroc > 0.75 and leaky.ci_low > 0.7 and mia_verdict(leaky).level == "fail"  # measured 0.839
    assert mia_verdict(leaky).check == "membership inference, density ratio (test-features)"
    safe = density_ratio_inference(s["independent"], s["train"], non, ref, SPACE, n_bootstrap=200)
    assert safe.ci_low < 0.5 < safe.ci_high and mia_verdict(safe).level == "pass"
    # the score is log p_syn - log p_ref: the same images give the same AUROC whatever their order
    again = density_ratio_inference(s["independent"][::-1], s["train"], non, ref, SPACE, n_bootstrap=200)
    assert again.auroc == pytest.approx(safe.auroc, abs=1e-9)
    with pytest.raises(DataError, match="at least 10 reference"):
        density_ratio_inference(s["copies"], s["train"], non, ref[:5], SPACE)


def test_a_shift_between_the_held_out_splits_is_named_in_the_verdict() -> None:
    """Non-members from two pools (validation like the members, test shifted, as MedMNIST's official test
    split): the attack's WARN says part of its signal is that shift; one pool: the shift is at chance."""
    rng = np.random.default_rng(0)
    members, val = rng.normal(0, 1, 400), rng.normal(0, 1, 200)
    kw = {"attack": "distance", "score": "s", "space": "pixels", "implementation": "test", "n_synthetic": 0,
          "n_bootstrap": 200}  # fmt: skip
    res = attack_result(members, np.concatenate([val, rng.normal(-0.6, 1, 200)]), **kw)
    plain = mia_verdict(res)
    assert res.ci_low > 0.5 and plain.level == "warn" and "splits" not in plain.reason
    shifted = with_split_shift(res, len(val), n_bootstrap=200)
    assert shifted.split_shift is not None and shifted.split_shift["ci_low"] > 0.5
    named = mia_verdict(shifted)
    assert named.level == "warn" and named.reason.startswith(plain.reason) and "shift between the splits" in named.reason
    same = with_split_shift(attack_result(members, rng.normal(0, 1, 400), **kw), len(val), n_bootstrap=200)
    assert same.split_shift is not None and abs(same.split_shift["auroc"] - 0.5) < 0.1
    assert res.split_shift is None and with_split_shift(res, 5) is res  # too few validation images: left as is


def test_the_density_attack_measures_its_split_shift_with_half_the_validation_patients() -> None:
    """Members and validation images from one distribution, a synthetic set narrower than it (no copies), the
    test images shifted: the density attack (reference = validation) ranks members above test images by the
    shift alone, and its split shift, refitted with half the validation patients as reference, says so; with
    unshifted test images it is ~0.5."""
    rng = np.random.default_rng(1)
    syn, (members, val) = rng.normal(0, 0.7, (600, 4)), (rng.normal(0, 1, (n, 4)) for n in (300, 200))
    val_ids = np.repeat(np.arange(100), 2)  # two images per patient: the halves are drawn by patient

    def attacked(test: np.ndarray) -> MIAResult:
        res = density_ratio_inference(syn, members, test, val, SPACE, n_bootstrap=200)
        return with_density_split_shift(res, syn, members, val, test, SPACE, validation_ids=val_ids,
                                        test_ids=np.arange(1000, 1000 + len(test)), n_bootstrap=200)  # fmt: skip

    shifted = attacked(rng.normal(0, 1, (200, 4)) + np.array([1.5, 0, 0, 0]))
    assert shifted.ci_low > 0.5 and shifted.split_shift is not None and shifted.split_shift["ci_low"] > 0.5
    assert "shift between the splits" in mia_verdict(shifted).reason
    same = attacked(rng.normal(0, 1, (200, 4)))
    assert same.split_shift is not None and same.split_shift["ci_low"] < 0.5 < same.split_shift["ci_high"]
    tiny = density_ratio_inference(syn, members, val, val, SPACE, n_bootstrap=20)
    assert with_density_split_shift(tiny, syn, members, val[:12], val, SPACE, validation_ids=val_ids[:12],
                                    test_ids=np.arange(200), n_bootstrap=20) is tiny  # halves too small: as is


def test_privacy_input_errors(phantom_sets: dict[str, np.ndarray]) -> None:
    s = phantom_sets
    with pytest.raises(DataError, match="at least 20 held-out"):
        distance_to_closest_record(s["copies"], s["train"], s["holdout"][:5], SPACE)
    bad = s["copies"].copy()
    bad[3, 0] = np.inf
    with pytest.raises(DataError, match="synthetic features: 1 NaN/inf"):
        distance_to_closest_record(bad, s["train"], s["holdout"], SPACE)
    with pytest.raises(DataError, match="dimensions differ"):
        membership_inference(s["copies"], s["train"][:, :10], s["holdout"], SPACE)
    with pytest.raises(DataError, match="at least 10 non_members"):
        membership_inference(s["copies"], s["train"], s["holdout"][:4], SPACE)
    with pytest.raises(DataError, match="patient ids"):
        membership_inference(s["copies"], s["train"], s["holdout"], SPACE, member_ids=[1, 2], non_member_ids=[3])


@needs_data("pneumoniamnist")
def test_real_radiographs_copies_flagged_unseen_patients_not() -> None:
    data = np.load(SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz")
    train = data["train_images"][:1500, None]
    test = data["test_images"][:, None]  # official test split: other patients
    pix = PixelFeatures(size=28)
    f_train, f_unseen, f_holdout = pix(train), pix(test[:300]), pix(test[300:])
    rng = np.random.default_rng(0)
    copies = np.clip(train[:300] / 255 + rng.normal(0, 0.02, (300, 1, 28, 28)), 0, 1).astype(np.float32)
    leaky = distance_to_closest_record(pix(copies), f_train, f_holdout, pix)
    unseen = distance_to_closest_record(f_unseen, f_train, f_holdout, pix)
    assert dcr_verdict(leaky).level == "fail" and dcr_verdict(unseen).level == "pass"
