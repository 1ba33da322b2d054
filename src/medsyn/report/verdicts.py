"""The verdict rules under their earlier import path (`benchmarks/make_benchmarks_md.py` imports REID_FPR from
here); every rule and threshold lives in `medsyn.evaluate.verdicts`."""

from medsyn.evaluate.verdicts import REID_FPR, THRESHOLDS, overall, realistic_verdict, reid_verdict, useful_verdict

__all__ = ["REID_FPR", "THRESHOLDS", "overall", "realistic_verdict", "reid_verdict", "useful_verdict"]
