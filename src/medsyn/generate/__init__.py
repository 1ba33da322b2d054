"""Generation: synthetic sets in the source dataset's format, and shareable generator exports.

from medsyn.generate import generate, export
generate("runs/cgan64", n=10_000, out="synthetic/cgan64")          # training label distribution
generate("runs/cgan64", None, "synthetic/pc", per_class=500)         # 500 per class (+ No Finding)
generate("runs/cgan64", None, "synthetic/bal", balance=True)         # top rare classes up
export("runs/cgan64", "shared/cgan64")                               # safetensors + JSON, no pickle
"""

from medsyn.generate.core import export, generate
from medsyn.generate.plan import Plan, make_plan

__all__ = ["Plan", "export", "generate", "make_plan"]
