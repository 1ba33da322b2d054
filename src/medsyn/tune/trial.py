"""One tuning trial: train the suggested config in stages, score each stage on validation, prune the hopeless.

The trial's budget (wall seconds of generator training, or steps) is cut into `reports` equal stages. After
each stage the run is paused with a checkpoint (`medsyn.train.train` with a growing time limit / step count
resumes it exactly), a synthetic set is drawn and scored (validation TSTR AUROC), and the score is reported
to Optuna at "percent of the budget" 33, 67, 100; the median pruner stops a trial whose score at a stage is
below the median of earlier trials at the same stage. Each stage's score is kept in the trial folder, so a
trial killed midway and enqueued again (same parameters, same folder) continues where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from medsyn.errors import DataError, MedsynError
from medsyn.evaluate.synthetic import load_synthetic
from medsyn.generate import generate
from medsyn.io import to_jsonable, write_json_atomic
from medsyn.train import TrainConfig, train
from medsyn.train.run import RUN_FILE, read_run_meta
from medsyn.tune.objective import Scorer
from medsyn.tune.space import apply, suggest

UNBOUNDED_STEPS = 10**9  # a wall-clock budget stops training, never the step count


class TrialFailed(Exception):
    """Training of a trial's config failed (e.g. diverged): the trial is recorded as FAIL, the study goes on."""


@dataclass(frozen=True)
class Budget:
    """Per trial: wall seconds of generator training and/or generator steps (whichever ends first)."""

    seconds: float | None
    steps: int | None
    reports: int = 3

    def stages(self) -> list[tuple[int, int, float | None]]:
        """(percent of the budget, steps limit, seconds limit) at the end of each stage."""
        out = []
        for k in range(1, self.reports + 1):
            steps = UNBOUNDED_STEPS if self.steps is None else max(1, math.ceil(self.steps * k / self.reports))
            seconds = None if self.seconds is None else self.seconds * k / self.reports
            out.append((round(100 * k / self.reports), steps, seconds))
        return out


@dataclass
class TrialRunner:
    """The Optuna objective: a trial's folder is OUT/trials/NNNN (or the folder of the trial it resumes)."""

    base: TrainConfig  # resolved, training on the study's prepared cache
    dists: Mapping[str, BaseDistribution]
    budget: Budget
    scorer: Scorer
    n_synthetic: int
    privacy_penalty: float
    out: Path
    quiet: bool = True

    def __call__(self, trial: optuna.Trial) -> float:
        folder = self.out / str(trial.user_attrs.get("folder") or f"trials/{trial.number:04d}")
        trial.set_user_attr("folder", folder.relative_to(self.out).as_posix())
        try:
            cfg = apply(self.base, suggest(trial, self.dists))
            return self._run(trial, cfg, folder)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # the next run of the same command enqueues it again
            raise
        except MedsynError as exc:
            trial.set_user_attr("error", " ".join(str(exc).split())[:300])
            raise TrialFailed(str(exc)) from None

    def _run(self, trial: optuna.Trial, cfg: TrainConfig, folder: Path) -> float:
        run = folder / "run"
        stages = self.budget.stages()
        for i, (percent, steps, seconds) in enumerate(stages):
            final = i == len(stages) - 1
            train(replace(cfg, steps=steps), run, resume=(run / RUN_FILE).is_file(), quiet=True, time_limit_s=seconds)
            score = self._score(run, folder, percent, final)
            if score["val_tstr_auroc"] is None or not math.isfinite(score["val_tstr_auroc"]):  # no class scored
                raise DataError(f"the validation TSTR AUROC is undefined at {percent}% of the budget")
            for key in ("steps", "images_seen", "train_s", "stop_reason"):
                trial.set_user_attr(key, score[key])
            trial.report(score["val_tstr_auroc"], percent)
            if not final and trial.should_prune():
                raise optuna.TrialPruned(f"validation TSTR {score['val_tstr_auroc']:.3f} at {percent}% of the budget")
        for key in ("val_tstr_auroc", "penalty", "recall", "coverage", "precision", "density", "privacy",
                    "dcr_below_p1", "dcr_expected_p1"):  # fmt: skip
            if key in score:
                trial.set_user_attr(key, score[key])
        return float(score["value"])

    def _score(self, run: Path, folder: Path, percent: int, final: bool) -> dict[str, Any]:
        """Draw, decode and score this stage's synthetic set (kept as scores/PPP.json; the images are not)."""
        path = folder / "scores" / f"{percent:03d}.json"
        if path.is_file():
            return dict(json.loads(path.read_text()))
        prog = read_run_meta(run)["progress"]
        synthetic = folder / "synthetic"
        sets = self.scorer.sets
        generate(run, self.n_synthetic, synthetic, seed=self.base.seed, device=self.scorer.cfg.device, quiet=True)
        syn = load_synthetic(synthetic, sets.classes, int(sets.train.images.shape[-1]),
                             int(sets.train.images.shape[1]), quiet=True)  # fmt: skip
        tstr = self.scorer.tstr(syn.images, syn.labels)
        score: dict[str, Any] = {
            "val_tstr_auroc": tstr, "steps": prog["steps"], "images_seen": prog["images_seen"],
            "train_s": prog["train_seconds"], "stop_reason": prog["stop_reason"],
        }  # fmt: skip
        if final:
            score.update(self.scorer.fidelity(syn.images))
            if self.privacy_penalty > 0:
                score.update(self.scorer.privacy(syn.images))
            score["penalty"] = self.privacy_penalty if score.get("privacy") == "fail" else 0.0
            score["value"] = tstr - score["penalty"]
        write_json_atomic(path, to_jsonable(score))
        shutil.rmtree(synthetic, ignore_errors=True)
        return score
