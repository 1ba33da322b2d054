"""How far a training run got and why it stopped: run.json's `progress`, the closing line of `medsyn train`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsyn.report.markup import round_up


def training_done(state: Mapping[str, Any], steps: int, time_limit_s: float | None = None) -> bool:
    """Whether a checkpoint has reached `steps`, or used up a time limit."""
    spent = float(state.get("train_seconds", 0.0))
    return int(state["step"]) >= steps or (time_limit_s is not None and spent >= time_limit_s)


def progress(state: Mapping[str, Any], steps: int, time_limit_s: float | None) -> dict[str, Any]:
    """How far a generator got and why it stopped, as run.json's `progress` records it.

    stop_reason: 'completed' (all `steps`), 'time-limit' (the training-time budget ran out first),
    'privacy-budget' (differentially private training: one more step would spend more than the target epsilon)
    or 'interrupted' (none of these: the run was killed and can be resumed). A private run's `privacy` entry
    (train/privacy.py `DPAccount.summary`) is copied along, without the checkpoint's secret and history."""
    step = int(state["step"])
    spent = float(state.get("train_seconds", 0.0))
    if step >= steps:
        reason = "completed"
    elif time_limit_s is not None and spent >= time_limit_s:
        reason = "time-limit"
    elif state.get("privacy", {}).get("budget_exhausted"):
        reason = "privacy-budget"
    else:
        reason = "interrupted"
    return {
        "steps": step,
        "steps_planned": steps,
        "images_seen": int(state["images_seen"]),
        "train_seconds": round(spent, 3),
        "stop_reason": reason,
        **({"privacy": public_privacy(state["privacy"])} if state.get("privacy") else {}),
    }


def public_privacy(state: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's DP record without what must stay secret (the noise seed) or is bulk (the history)."""
    return {k: v for k, v in state.items() if k not in ("secret", "history", "budget_exhausted")}


def progress_line(prog: Mapping[str, Any]) -> str:
    """One line for the end of `medsyn train`: steps trained, images seen and why training stopped."""
    why = {
        "completed": "all planned steps done",
        "time-limit": "stopped by the time limit: the generator is under-trained; resume with a larger --time-limit",
        "privacy-budget": "stopped because one more step would spend more than the target epsilon",
        "interrupted": "interrupted; resume with --resume",
    }[prog["stop_reason"]]
    dp = prog.get("privacy")
    spent = f"; ({round_up(dp['epsilon'])}, {dp['delta']:.3g})-DP (target epsilon {dp['target_epsilon']:g})" if dp else ""
    return (
        f"trained {prog['steps']:,} of {prog['steps_planned']:,} steps ({prog['images_seen']:,} images seen, "
        f"{prog['train_seconds']:.0f} s of training): {why}{spent}"
    )


def run_progress(reached: list[dict[str, Any]], names: list[str], conditional: bool) -> dict[str, Any]:
    """run.json's `progress` from each generator's `progress(...)`: the generator's own, or for per-class
    runs the totals (fewest steps, images summed, the least finished reason) and each group's."""
    if conditional:
        return reached[0]
    order = ("completed", "time-limit", "privacy-budget", "interrupted")  # the run's reason is its least finished group's
    total = {
        "steps": min(r["steps"] for r in reached),
        "steps_planned": reached[0]["steps_planned"],
        "images_seen": sum(r["images_seen"] for r in reached),
        "train_seconds": round(sum(r["train_seconds"] for r in reached), 3),
        "stop_reason": max((r["stop_reason"] for r in reached), key=order.index),
    }
    return {**total, "groups": [{"group": n, **r} for n, r in zip(names, reached, strict=True)]}
