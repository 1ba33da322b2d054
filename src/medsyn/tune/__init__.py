"""Hyper-parameter tuning of the generators against what users care about: validation TSTR AUROC.

    from medsyn.tune import tune
    tune("medmnist:pneumoniamnist.npz", "tune/pneu", model="cgan", trials=20, budget="10m", size=28)
    # tune/pneu: study.db (Optuna, SQLite), trials.csv, best.yaml (medsyn train --config), tune.html

Search spaces live beside the models (`medsyn.models.spaces`); the objective reads the training and
validation patients only (`objective.py`); a trial trains in stages and is pruned on the median rule
(`trial.py`); the study, its resume and its outputs are `study.py` and `report.py`.
"""

from medsyn.tune.study import TuneConfig, run_tune, tune

__all__ = ["TuneConfig", "run_tune", "tune"]
