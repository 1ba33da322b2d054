"""The closing table of `medsyn evaluate`: one row per question with its verdict and key numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medsyn.evaluate.verdicts import REID_FPR


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(question, verdict, key numbers) for a terminal summary."""
    rows = []
    u, f, p = metrics.get("utility", {}), metrics.get("fidelity", {}), metrics.get("privacy", {})
    v = metrics["verdicts"]
    if "trtr" in u:
        r = u["ratio"]["tstr_over_trtr_above_chance"]["value"]
        nums = f"TRTR {u['trtr']['mean_auroc']:.3f}  TSTR {u['tstr']['mean_auroc']:.3f}  above-chance ratio {_fmt(r)}"
    else:
        nums = "not assessed"
    rows.append(("Useful?", v["useful"]["level"], nums))
    if "fid" in f:
        base = f["fid"].get("baseline") or {}
        nums = (f"FID {f['fid']['fid']:.3g} (real-real {_fmt(base.get('real_vs_real'))} at N={base.get('n')})  "
                f"KID {f['kid']['kid']:.3g}  P {f['prdc']['precision']:.2f}  C {f['prdc']['coverage']:.2f}")  # fmt: skip
    else:
        nums = "not assessed"
    rows.append(("Realistic?", v["realistic"]["level"], nums))
    parts = []
    dcr = p.get("dcr", {}).get("pixel", {})
    if "fraction_below_p1" in dcr:
        parts.append(f"DCR<p1 {100 * dcr['fraction_below_p1']:.1f}%")
    mia = p.get("membership_inference", {}).get("pixel", {})
    if "auroc" in mia:
        parts.append(f"MIA AUROC {mia['auroc']:.3f}")
    match = p.get("reidentification", {}).get("matching")
    if match:
        parts.append(f"re-id linked {100 * match['gallery_calibrated'][str(REID_FPR)]['synthetic']['fraction']:.1f}%")
    rows.append(("Private?", v["private"]["level"], "  ".join(parts) or "not assessed"))
    return rows


def _fmt(value: Any) -> str:
    return "?" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3g}"
