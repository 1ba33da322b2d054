"""Generation: synthetic sets in the source dataset's format, and shareable generator exports.

from medsyn.generate import generate, export
generate("runs/cgan64", n=10_000, out="synthetic/cgan64")          # training label distribution
generate("runs/cgan64", None, "synthetic/pc", per_class=500)         # 500 per class (+ No Finding)
generate("runs/cgan64", None, "synthetic/bal", balance=True)         # top rare classes up
generate("runs/cgan64", 1000, "synthetic/safe", privacy_filter=True)  # re-draw near-copies of training images
export("runs/cgan64", "shared/cgan64")                               # safetensors + JSON, no pickle
"""

from medsyn.generate.core import export, generate, is_current
from medsyn.generate.plan import Plan, make_plan
from medsyn.generate.privacy_filter import PrivacyFilter

__all__ = ["Plan", "PrivacyFilter", "export", "generate", "is_current", "make_plan"]
