"""`medsyn tune`: an Optuna study over a model's search space, scored on validation patients only.

    from medsyn.tune import tune
    tune("medmnist:pneumoniamnist.npz", "tune/pneu", model="cgan", trials=20, budget="10m", size=28)

OUT holds the study (study.db, SQLite: `optuna-dashboard OUT/study.db` opens it), one folder per trial
(trials/NNNN: run, per-stage scores), trials.csv, best.yaml (`medsyn train --config OUT/best.yaml`) and
tune.html. Sampling is TPE (seeded per finished trial count, so a resumed study draws what an uninterrupted
one would have drawn from the same history); pruning is the median rule on the per-stage validation scores.
Trial 0 is the base config itself (model defaults, or --config), the score to beat.

A killed study continues with the same command: finished trials stay, a trial that was running is enqueued
again with its parameters and folder (its training resumes from the last stage's checkpoint), and the study
runs until `trials` trials have finished (complete, pruned or failed). One process per OUT (a lock says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from medsyn.data.cache import PreparedDataset, prepare
from medsyn.errors import ConfigError
from medsyn.evaluate.classifier import ClassifierConfig
from medsyn.evaluate.config import coerce_config
from medsyn.evaluate.settings import resolve_device
from medsyn.io import to_jsonable, write_json_atomic
from medsyn.models.spaces import space_for
from medsyn.train import TrainConfig
from medsyn.train.data import cache_dir_for
from medsyn.train.runtime import derive_seed
from medsyn.tune.objective import Scorer, classifier_for, validation_sets
from medsyn.tune.report import write_outputs
from medsyn.tune.space import default_values, distributions
from medsyn.tune.trial import Budget, TrialFailed, TrialRunner

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

STUDY_NAME = "medsyn-tune"
DEFAULT_N_SYNTHETIC = 2000  # synthetic images per score (fewer if the real training split is smaller)
#: Settings a rerun of the same study may change: how many trials, where it runs, what it prints.
RESUMABLE = frozenset({"trials", "device"})


def _fast_classifier() -> ClassifierConfig:
    return ClassifierConfig(epochs=5, patience=2)


@dataclass
class TuneConfig:
    """One study. `base`: a TrainConfig dict to start from (e.g. read from --config); data/model/size/seed here
    override it. `budget_s` and/or `steps` bound each trial's generator training."""

    data: str
    model: str | None = None  # None: the base config's, else cgan
    trials: int = 20
    budget_s: float | None = None
    steps: int | None = None
    size: int | None = None  # None: the base config's, a cache folder's, or 64
    seed: int = 0
    base: dict[str, Any] | None = None
    n: int | None = None  # synthetic images per score; None: min(real training images, 2000)
    reports: int = 3  # scored stages per trial (the median pruner's steps)
    privacy_penalty: float = 0.0  # subtracted from a trial whose pixel DCR check fails
    startup_trials: int = 5  # random trials before TPE models the history; trials the pruner never prunes
    classifier: ClassifierConfig = field(default_factory=_fast_classifier)
    device: str = "auto"

    def __post_init__(self) -> None:
        self.classifier = coerce_config(ClassifierConfig, self.classifier)
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials!r}")
        if self.budget_s is None and self.steps is None:
            raise ConfigError("give each trial a budget: --budget (training time, e.g. 10m) and/or --steps")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ConfigError(f"--budget must be positive, got {self.budget_s}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be a positive integer, got {self.steps}")
        if self.n is not None and self.n < 2:
            raise ConfigError(f"--n must be at least 2 synthetic images, got {self.n}")
        if self.reports < 1 or self.startup_trials < 0:
            raise ConfigError("reports must be >= 1 and startup_trials >= 0")
        if not self.privacy_penalty >= 0:
            raise ConfigError(f"--privacy-penalty must be >= 0, got {self.privacy_penalty}")

    def train_config(self) -> TrainConfig:
        """The base training config (validated; unknown model or size: one-line ConfigError)."""
        d = dict(self.base or {})
        d["data"] = self.data
        d["model"] = self.model or d.get("model") or "cgan"
        d["seed"] = self.seed
        if self.size is not None:
            d["size"] = self.size
        elif "size" not in d and (Path(self.data).expanduser() / "meta.json").is_file():
            d["size"] = PreparedDataset(Path(self.data).expanduser()).size
        d.pop("time_limit_s", None)
        space_for(d["model"])  # unknown model: the same one line as train's
        return TrainConfig.from_dict(d).resolved()


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k not in RESUMABLE}
    out["classifier"] = {k: v for k, v in d["classifier"].items() if k not in ("device", "progress")}
    return out


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One process per study folder (a second one would take the first one's running trial for a killed one)."""
    with open(out / ".tune.lock", "w") as fh:
        try:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"another medsyn tune is running in {out}; wait for it or use another --out") from None
        yield


def _check_settings(cfg: TuneConfig, out: Path) -> None:
    stored = out / "tune.json"
    now = to_jsonable(asdict(cfg))
    mine = _comparable(now)
    if stored.is_file():
        try:
            before = _comparable(json.loads(stored.read_text())["settings"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{stored}: unreadable study settings ({exc}); use another --out") from None
        changed = sorted(k for k in before.keys() | mine.keys() if before.get(k) != mine.get(k))
        if changed:
            raise ConfigError(f"{out} holds a study with other settings ({', '.join(changed)}); use another --out")
    write_json_atomic(stored, {"settings": now})


def _open_data(base: TrainConfig, out: Path) -> PreparedDataset:
    path = Path(base.data)
    if (path / "meta.json").is_file():
        ds = PreparedDataset(path)
        if ds.size != base.size:
            raise ConfigError(f"{path} holds {ds.size} px images but the study trains at {base.size} px; pass --size")
        return ds
    target = cache_dir_for(replace(base, cache=base.cache or str(out / "cache")), out)
    return prepare(base.data, base.size, target, seed=base.split_seed, quiet=True)


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards the study's total: finished, except interrupted ones (they are redone)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not t.user_attrs.get("interrupted") for t in trials)


def _requeue_interrupted(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Trials a kill left RUNNING (or a Ctrl-C left FAIL, marked interrupted) are enqueued again, once."""
    trials = study.get_trials(deepcopy=False)
    redone = {t.user_attrs.get("resumes") for t in trials}
    again = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY_NAME), t.number)
            storage.set_trial_user_attr(tid, "interrupted", True)
            storage.set_trial_state_values(tid, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number not in redone:
            attrs = {k: v for k, v in t.user_attrs.items() if k in ("folder", "baseline")}
            study.enqueue_trial(t.params, user_attrs={**attrs, "resumes": t.number})
            again.append(t.number)
    return again


def _study(storage: RDBStorage, cfg: TuneConfig, number: int) -> optuna.Study:
    """The study with a sampler seeded by how many trials have finished (interrupted ones do not count), so a
    resumed study draws what an uninterrupted one would have drawn."""
    sampler = optuna.samplers.TPESampler(seed=derive_seed(cfg.seed, number), n_startup_trials=cfg.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)  # fmt: skip


def run_tune(cfg: TuneConfig, out: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) the study `cfg` in `out`; returns tune.json's summary (best trial, paths)."""
    out = Path(out)
    base = cfg.train_config()
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        _check_settings(cfg, out)
        ds = _open_data(base, out)
        sets = validation_sets(ds, list(base.classes or ds.classes), cfg.seed)
        scorer = Scorer(sets, classifier_for(cfg.classifier, device, cfg.seed), out / "reference")
        _, trtr = scorer.reference()
        trial_base = replace(base, data=str(ds.path), device=device)
        space = space_for(base.model)
        dists = distributions(space, base)
        storage = RDBStorage(f"sqlite:///{(out / 'study.db').absolute()}")
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial is printed here instead
        study = _study(storage, cfg, 0)
        if not study.trials:
            study.enqueue_trial(default_values(dists, space, base), user_attrs={"baseline": True})
            study.set_user_attr("val_trtr_auroc", trtr)
            study.set_user_attr("notes", sets.notes)
            study.set_user_attr(
                "dataset",
                f"{ds.meta.get('name') or 'data'} ({len(sets.train)} training, "
                f"{len(sets.val)} validation images, {base.size} px)",
            )
        again = _requeue_interrupted(study, storage)
        if again and not quiet:
            print(f"continuing: trial(s) {', '.join(map(str, again))} were interrupted and run again")
        n_synthetic = cfg.n or min(len(sets.train), DEFAULT_N_SYNTHETIC)
        runner = TrialRunner(trial_base, dists, Budget(cfg.budget_s, cfg.steps, cfg.reports), scorer, n_synthetic,
                             cfg.privacy_penalty, out)  # fmt: skip
        while counted(study.get_trials(deepcopy=False)) < cfg.trials:
            study = _study(storage, cfg, counted(study.get_trials(deepcopy=False)))
            study.optimize(runner, n_trials=1, catch=(TrialFailed,))
            trials = study.get_trials(deepcopy=False)
            if not quiet:
                print(trial_line(trials[-1], counted(trials), cfg.trials))
            write_outputs(study, base, cfg, out, page=False)  # the page (slower: figures) at the end
        return write_outputs(study, base, cfg, out, quiet=quiet)


def trial_line(t: FrozenTrial, done: int, total: int) -> str:
    """One line per finished trial: its state, score, steps trained and parameters."""
    a = t.user_attrs
    what = {TrialState.COMPLETE: f"val TSTR {t.value:.3f}" if t.value is not None else "complete",
            TrialState.PRUNED: "pruned", TrialState.FAIL: f"failed: {a.get('error', 'see study.db')}"}.get(t.state, "")  # fmt: skip
    steps = f", {a['steps']} steps" if "steps" in a else ""
    tag = " (base config)" if a.get("baseline") else ""
    return f"trial {done}/{total} (#{t.number}){tag}: {what}{steps}"


def tune(data: str, out: str | Path, *, budget: str | float | None = None, quiet: bool = False,
         **options: Any) -> dict[str, Any]:  # fmt: skip
    """Python API of `medsyn tune`: `budget` as seconds or '10m' / '90s'; other options are TuneConfig fields."""
    if isinstance(budget, str):
        from medsyn.cli.options import parse_duration  # the CLI's parser; imported here, not with the package

        budget = parse_duration(budget, "budget")
    budget_s = budget
    return run_tune(TuneConfig(data=data, budget_s=budget_s, **options), out, quiet=quiet)
