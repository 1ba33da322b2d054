"""Every verdict rule and threshold of `medsyn evaluate`: Useful? Realistic? Private?

Each check is pass / warn / fail, or n/a when it could not be assessed, with a one-line reason that quotes
the numbers. `THRESHOLDS` below is the table of every rule, printed in the report ("How the verdicts are
decided") and appended to this docstring; the thresholds are heuristics chosen to be stated and argued
about, not universal standards, and the metric tables next to each verdict let a reviewer apply their own.

How the checks combine (`overall`): the worst check decides; a check that could not run caps the verdict at
WARN; a check in a space the generator's privacy filter already screened is shown but does not decide
(it passes by construction), so an independent space must. Realistic? is FAIL for a collapsed set whatever
the features say, and NOT ASSESSED (not PASS) when the feature backbone is uninformative.

Layout: every threshold and the table are in `thresholds.py`; the rules, by question, in `useful.py`,
`realistic.py` and `private.py`; `Verdict` and `overall` in `base.py`. Import them from here.
"""

from __future__ import annotations

from medsyn.evaluate.verdicts.base import Verdict, overall
from medsyn.evaluate.verdicts.private import (
    concentration_context,
    concentration_verdict,
    dcr_verdict,
    filtered,
    mia_verdict,
    reid_verdict,
)
from medsyn.evaluate.verdicts.realistic import (
    NO_RESEMBLANCE,
    backbone_problem,
    diversity_verdict,
    realistic_overall,
    realistic_verdict,
)
from medsyn.evaluate.verdicts.thresholds import (
    BACKBONE_MIN_AUROC,
    CONCENTRATION_FAIL_P,
    CONCENTRATION_FAIL_RATIO,
    CONCENTRATION_MIN_SHARE,
    CONCENTRATION_NO_RESEMBLANCE,
    CONCENTRATION_WARN_P,
    CONCENTRATION_WARN_RATIO,
    DCR_FAIL_P,
    DCR_FAIL_RATIO,
    DCR_WARN_P,
    DCR_WARN_RATIO,
    DIVERSITY_FAIL,
    DIVERSITY_WARN,
    FID_PASS,
    FID_WARN,
    MIA_FAIL_AUROC,
    PRDC_PASS,
    PRDC_WARN,
    REID_FAIL_RATIO,
    REID_FPR,
    REID_WARN_RATIO,
    REID_WEAK_AUROC,
    SALIENCY_GAP,
    SALIENCY_MIN_PAIRED,
    SALIENCY_P,
    THRESHOLDS,
    USEFUL_PASS,
    USEFUL_WARN,
)
from medsyn.evaluate.verdicts.useful import (
    saliency_below_baseline,
    saliency_verdict,
    segmentation_verdict,
    useful_overall,
    useful_verdict,
)

__doc__ = (__doc__ or "") + "\nRules:\n\n" + "\n".join(
    f"{question}\n" + "\n".join(f"  - {line}" for line in lines) for question, lines in THRESHOLDS.items()
)

__all__ = [  # the rules and thresholds, importable from here as before the package was split
    "BACKBONE_MIN_AUROC",
    "CONCENTRATION_FAIL_P",
    "CONCENTRATION_FAIL_RATIO",
    "CONCENTRATION_MIN_SHARE",
    "CONCENTRATION_NO_RESEMBLANCE",
    "CONCENTRATION_WARN_P",
    "CONCENTRATION_WARN_RATIO",
    "DCR_FAIL_P",
    "DCR_FAIL_RATIO",
    "DCR_WARN_P",
    "DCR_WARN_RATIO",
    "DIVERSITY_FAIL",
    "DIVERSITY_WARN",
    "FID_PASS",
    "FID_WARN",
    "MIA_FAIL_AUROC",
    "NO_RESEMBLANCE",
    "PRDC_PASS",
    "PRDC_WARN",
    "REID_FAIL_RATIO",
    "REID_FPR",
    "REID_WARN_RATIO",
    "REID_WEAK_AUROC",
    "SALIENCY_GAP",
    "SALIENCY_MIN_PAIRED",
    "SALIENCY_P",
    "THRESHOLDS",
    "USEFUL_PASS",
    "USEFUL_WARN",
    "Verdict",
    "backbone_problem",
    "concentration_context",
    "concentration_verdict",
    "dcr_verdict",
    "diversity_verdict",
    "filtered",
    "mia_verdict",
    "overall",
    "realistic_overall",
    "realistic_verdict",
    "reid_verdict",
    "saliency_below_baseline",
    "saliency_verdict",
    "segmentation_verdict",
    "useful_overall",
    "useful_verdict",
]
