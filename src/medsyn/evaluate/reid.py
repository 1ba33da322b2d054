"""The re-identification API under its earlier import path (`medsyn.generate.privacy_filter` and its tests use
it); the code lives in `medsyn.evaluate.privacy.reid`, `.verification` and `.linkage`."""

from medsyn.evaluate.privacy.linkage import match_synthetic
from medsyn.evaluate.privacy.reid import HEADS, ReidConfig, ReidModel, load_reid, save_reid, train_reid
from medsyn.evaluate.privacy.verification import PairSampler, verification_auroc
from medsyn.evaluate.stats import wilson_ci

__all__ = ["HEADS", "PairSampler", "ReidConfig", "ReidModel", "load_reid", "match_synthetic", "save_reid",
           "train_reid", "verification_auroc", "wilson_ci"]  # fmt: skip
