"""Benchmark sweeps (Schütte et al. 2021): synthetic/real classifier performance as the number of classes or
the number of real training images per class grows.

from medsyn.benchmark import SweepConfig, run_sweep
run_sweep(SweepConfig("pneumoniamnist:/data/pneumoniamnist.npz", sweep="samples", points=[50, 200, 800],
                      budget_s=300), "sweeps/pneumonia-samples")   # results.csv, sweep.png, report.html
"""

from medsyn.benchmark.sweep import SWEEPS, SweepConfig, plan_points, run_sweep

__all__ = ["SWEEPS", "SweepConfig", "plan_points", "run_sweep"]
