"""Patient-level splits, class selection and per-class caps.

No patient is ever in two splits: rows are grouped by patient, and patients that share an image file
(the same `source`, e.g. duplicated ieee8023 rows) are joined into one group. Groups are stratified by
their rarest positive class, deterministic from a seed. Official splits are honoured: rows already
marked `train`/`val`/`test` stay there; `trainval` rows are divided into train and val.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from medsyn.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def patient_groups(table: pd.DataFrame) -> np.ndarray:
    """Group id per row: connected components of the row-patient and row-file relations."""
    n = len(table)
    pat = pd.factorize(table["patient_id"])[0]
    src = pd.factorize(table["source"])[0] + pat.max(initial=-1) + 1
    nodes = int(src.max(initial=-1)) + 1
    rows = np.concatenate([pat, pat])
    cols = np.concatenate([pat, src])
    graph = coo_matrix((np.ones(2 * n), (rows, cols)), shape=(nodes, nodes))
    _, comp = connected_components(graph, directed=False)
    return comp[pat]


def _strat_key(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per row, the key of its group: the group's rarest positive class, or -1 for no finding."""
    pos = np.nan_to_num(labels, nan=0.0) > 0
    freq = pos.sum(axis=0)
    order = np.argsort(freq, kind="stable")  # rarest first
    group_pos = pd.DataFrame(pos).groupby(groups).any().to_numpy()
    key = np.full(len(group_pos), -1)
    for c in order[::-1]:  # rarest written last wins
        key[group_pos[:, c]] = c
    return key[pd.Index(np.unique(groups)).get_indexer(groups)]


def _carve(idx: np.ndarray, frac: float, labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask over `idx` selecting about `frac` of its groups, stratified."""
    take = np.zeros(len(idx), bool)
    n_groups = len(np.unique(groups[idx]))
    if frac <= 0 or n_groups < 2:
        return take
    k = int(min(max(2, round(1 / frac)), n_groups))
    keys = _strat_key(labels[idx], groups[idx])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare strata smaller than k are expected and handled fine
        warnings.simplefilter("ignore", UserWarning)
        try:
            _, fold = next(iter(splitter.split(np.zeros(len(idx)), keys, groups[idx])))
        except ValueError:  # every stratum is smaller than k (a handful of images): no stratification possible
            unique = np.unique(groups[idx])
            chosen = np.random.default_rng(seed).choice(unique, max(1, round(len(unique) / k)), replace=False)
            fold = np.flatnonzero(np.isin(groups[idx], chosen))
    take[fold] = True
    return take


def assign_splits(
    table: pd.DataFrame, classes: list[str], val: float = 0.1, test: float = 0.2, seed: int = 0
) -> pd.Series:
    """Split name per row (train/val/test), by patient group, honouring official splits.

    Without official splits, `test` and `val` are fractions of all patients. With an official
    train/val pool (NIH's train_val_list, CheXpert's train.csv), `val` is carved from that pool.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")
    labels = table[classes].to_numpy(dtype=np.float32)
    groups = patient_groups(table)
    split = table["split"].astype(str).to_numpy().copy()
    # A patient with any official test image goes to test whole (guards against leaky official lists).
    split[np.isin(groups, groups[split == "test"])] = "test"
    if (split == "").all():
        pool = np.arange(len(split))
        is_test = _carve(pool, test, labels, groups, seed)
        split[pool[is_test]] = "test"
        pool, val_frac = pool[~is_test], val / (1 - test)
    else:
        pool, val_frac = np.flatnonzero(np.isin(split, ["trainval", ""])), val
    is_val = _carve(pool, val_frac, labels, groups, seed + 1)
    split[pool[is_val]] = "val"
    split[pool[~is_val]] = "train"
    return pd.Series(split, index=table.index, name="split")


def check_no_leak(table: pd.DataFrame) -> None:
    """DataError if any patient group appears in two splits."""
    groups = patient_groups(table)
    per_group = pd.Series(table["split"].to_numpy()).groupby(groups).nunique()
    if (per_group > 1).any():
        g = int(per_group.idxmax())
        pid = table["patient_id"].to_numpy()[groups == g][0]
        raise DataError(f"patient {pid} appears in more than one split")


def pos_cols(table: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Rows positive for any of `cols` (masked labels count as not positive)."""
    return (np.nan_to_num(table[cols].to_numpy(np.float32)) > 0).any(axis=1)


def select_classes(
    table: pd.DataFrame, classes: list[str], keep: list[str], normal: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Keep only classes `keep` (in that order); add an explicit `normal` class when named.

    Rows positive only for dropped classes are removed, since calling them normal would mislabel them.
    """
    unknown = [c for c in keep if c not in classes]
    if unknown:
        raise ConfigError(f"unknown class(es) {', '.join(unknown)}; the data has {', '.join(classes)}")
    dropped = [c for c in classes if c not in keep]
    only_dropped = pos_cols(table, dropped) & ~pos_cols(table, keep) if dropped else np.zeros(len(table), bool)
    out = table.loc[~only_dropped].drop(columns=dropped).reset_index(drop=True)
    new_classes = list(keep)
    if normal:
        if normal in new_classes:
            raise ConfigError(f"normal class name {normal!r} collides with a finding")
        out[normal] = (~pos_cols(out, new_classes)).astype(np.float32)
        new_classes.append(normal)
    for c in new_classes:
        if not (out[c] > 0).any():
            raise DataError(f"class {c!r} has no positive images after selection (empty class)")
    return out, new_classes


def cap_per_class(
    table: pd.DataFrame, classes: list[str], cap: int, seed: int = 0, split: str = "train"
) -> pd.DataFrame:
    """At most about `cap` training images per class (rarest classes filled first; all-negative rows count
    as one more class). Other splits are untouched, so test sets stay comparable across a sweep."""
    if cap < 1:
        raise ConfigError(f"per-class cap must be at least 1, got {cap}")
    rng = np.random.default_rng(seed)
    is_split = (table["split"] == split).to_numpy()
    pos = np.nan_to_num(table[classes].to_numpy(np.float32)) > 0
    pos = np.concatenate([pos, ~pos.any(axis=1, keepdims=True)], axis=1)
    chosen = np.zeros(len(table), bool)
    for c in np.argsort(pos[is_split].sum(axis=0), kind="stable"):
        have = int((chosen & pos[:, c]).sum())
        cand = np.flatnonzero(is_split & pos[:, c] & ~chosen)
        rng.shuffle(cand)
        chosen[cand[: max(0, cap - have)]] = True
    return table.loc[chosen | ~is_split].reset_index(drop=True)
