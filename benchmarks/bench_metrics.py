"""Time the fidelity/privacy metrics at evaluation scale, stage by stage, and print a table.

    .venv/bin/python benchmarks/bench_metrics.py                       # 10k x 10k, D=1024 and D=4096
    .venv/bin/python benchmarks/bench_metrics.py --n 100000 --device cuda --skip-kid --skip-fid

Features are synthetic but structured like real embeddings (a mixture of anisotropic clusters;
pixel-like vectors in [0, 1] from a low-rank smooth basis), real and "synthetic" sets drawn from the
same distribution. `--sklearn` also times, on the same problems, the two library alternatives to the
hand-written certified search (`medsyn.evaluate.neighbors`): sklearn's brute-force search and an exact
`torch.cdist` (float64, blocks of 1024 queries) + argmin, checks that the neighbours agree, and prints the
speed ratios: the measurement behind keeping the hand-written search.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medsyn.evaluate.features import FeatureSpace
from medsyn.evaluate.fidelity import compute_fid, compute_kid, compute_prdc, feature_stats, frechet_distance
from medsyn.evaluate.neighbors import ball_counts, knn

SPACE = FeatureSpace("bench", "synthetic mixture features")


def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Mixture of 50 anisotropic Gaussian clusters, like penultimate-layer features of a classifier."""
    rng = np.random.default_rng(0)  # shared cluster geometry for both sets
    centres, scales = rng.normal(0, 2, (50, dim)), rng.uniform(0.3, 1.5, (50, dim))
    draw = np.random.default_rng(seed)
    c = draw.integers(0, 50, n)
    return centres[c] + scales[c] * draw.normal(size=(n, dim))


def pixels(n: int, dim: int, seed: int) -> np.ndarray:
    """Flattened smooth 'images' in [0, 1]: 32 smooth basis images, random mixtures, pixel noise."""
    side = int(np.sqrt(dim))
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    basis = np.stack([np.cos(a * xx + b * yy + p) for a, b, p in rng.uniform(0, 4, (32, 3))]).reshape(32, -1)
    draw = np.random.default_rng(seed)
    x = 0.5 + 0.1 * draw.normal(size=(n, 32)) @ basis + 0.03 * draw.normal(size=(n, basis.shape[1]))
    return np.clip(x, 0, 1)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _cdist_nn(q: np.ndarray, r: np.ndarray, block: int = 1024) -> np.ndarray:
    """Exact nearest reference by torch.cdist in float64 (direct differences), blocks of queries."""
    rt = torch.from_numpy(r)
    return np.concatenate([
        torch.cdist(torch.from_numpy(q[i : i + block]), rt, compute_mode="donot_use_mm_for_euclid_dist").argmin(1).numpy()
        for i in range(0, len(q), block)
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images per set (real and synthetic)")
    ap.add_argument("--dim", type=int, default=1024, help="feature dimension")
    ap.add_argument("--pixel-dim", type=int, default=4096, help="pixel-space dimension (a square)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--blas-threads", type=int, default=0, help="numpy/scipy BLAS threads (0 = default)")
    ap.add_argument("--skip-fid", action="store_true")
    ap.add_argument("--skip-kid", action="store_true")
    ap.add_argument("--skip-prdc", action="store_true")
    ap.add_argument("--sklearn", action="store_true", help="also time sklearn brute-force NN (slow)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.blas_threads:
        # On a shared, oversubscribed CPU OpenBLAS threads spin against each other (sqrtm 10x slower).
        threadpool_limits(args.blas_threads, user_api="blas")
    rows: list[tuple[str, str, float, str]] = []

    def add(stage: str, shape: str, seconds: float, note: str = "") -> None:
        rows.append((stage, shape, seconds, note))
        print(f"  {stage:<34} {seconds:8.2f} s  {note}", flush=True)

    n, d = args.n, args.dim
    real, syn = embeddings(n, d, 1), embeddings(n, d, 2)
    shape = f"{n} x {n}, D={d}"
    t, nb = timed(lambda: knn(syn, real, 1, device=args.device))
    add("NN search k=1 (features)", shape, t, f"{nb.n_float64} queries re-searched in float64")
    pr, ps = pixels(n, args.pixel_dim, 1), pixels(n, args.pixel_dim, 2)
    t, nbp = timed(lambda: knn(ps, pr, 1, device=args.device))
    add("NN search k=1 (pixels)", f"{n} x {n}, D={args.pixel_dim}", t, f"{nbp.n_float64} re-searched")
    if args.sklearn:
        from sklearn.neighbors import NearestNeighbors

        t_ours = {"features": rows[-2][2], "pixels": rows[-1][2]}
        for what, (q, r, ours) in {"features": (syn, real, nb), "pixels": (ps, pr, nbp)}.items():
            t, (dist, idx) = timed(lambda q=q, r=r: NearestNeighbors(n_neighbors=1, algorithm="brute").fit(r).kneighbors(q))
            agree = float((idx[:, 0] == ours.indices[:, 0]).mean())
            add(f"sklearn brute NN k=1 ({what})", f"{len(q)} x {len(r)}", t,
                f"same neighbour for {100 * agree:.2f}% of queries; medsyn knn {t / t_ours[what]:.2f}x faster")
            t, idx = timed(lambda q=q, r=r: _cdist_nn(q, r))
            agree = float((idx == ours.indices[:, 0]).mean())
            add(f"torch.cdist float64 NN k=1 ({what})", f"{len(q)} x {len(r)}", t,
                f"same neighbour for {100 * agree:.2f}% of queries; medsyn knn {t / t_ours[what]:.2f}x faster")

    if not args.skip_fid:
        t1, (mu1, s1) = timed(lambda: feature_stats(real))
        t2, (mu2, s2) = timed(lambda: feature_stats(syn))
        add("FID: mean+covariance (both sets)", shape, t1 + t2)
        t, fid = timed(lambda: frechet_distance(mu1, s1, mu2, s2))
        add("FID: sqrtm + trace", f"D={d}", t, f"FID={fid:.3f}")
        t, res = timed(lambda: compute_fid(real, syn, SPACE, baseline_repeats=3))
        add(
            "FID total, with 3 same-N baselines",
            shape,
            t,
            f"baseline real-vs-real {res.baseline.real_vs_real:.3f}",
        )
    if not args.skip_kid:
        t, kid = timed(lambda: compute_kid(real, syn, SPACE, device=args.device))
        add("KID 100 subsets x 1000", shape, t, f"KID={kid.kid:.2e} +- {kid.kid_std:.1e}")
    if not args.skip_prdc:
        k = 5
        t_r, rr = timed(lambda: knn(real, real, k, exclude_self=True, device=args.device))
        add("PRDC: real k-NN radii", shape, t_r, f"{rr.n_float64} re-searched")
        t_s, rs = timed(lambda: knn(syn, syn, k, exclude_self=True, device=args.device))
        add("PRDC: synthetic k-NN radii", shape, t_s, f"{rs.n_float64} re-searched")
        t_p, _ = timed(lambda: ball_counts(syn, real, rr.distances[:, -1], device=args.device))
        add("PRDC: precision/density/coverage", shape, t_p)
        t_c, _ = timed(lambda: ball_counts(real, syn, rs.distances[:, -1], device=args.device))
        add("PRDC: recall", shape, t_c)
        t, res = timed(lambda: compute_prdc(real, syn, SPACE, k=k, device=args.device))
        note = f"P={res.precision:.3f} R={res.recall:.3f} D={res.density:.3f} C={res.coverage:.3f}"
        add("PRDC total (one call)", shape, t, note)

    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"\n| stage | problem | seconds | note |  ({device}, torch {torch.__version__})")
    print("|---|---|---:|---|")
    for stage, problem, seconds, note in rows:
        print(f"| {stage} | {problem} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
