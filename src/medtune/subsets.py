"""Stratified, nested, seeded training subsets: a share of each class (fractions) or a number of
images of each class (shots).

For each class a seeded permutation of its training samples is drawn once; the
subset at fraction f takes the first ``max(1, round(f% * n_class))`` of each
permutation. Prefixes of one permutation nest by construction (the 0.1 % subset
lies inside the 1 % subset of the same seed) and every class keeps a sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def class_permutations(labels: pd.Series, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        int(label): rng.permutation(group.index.to_numpy())
        for label, group in labels.groupby(labels, sort=True)
    }


def per_class_count(n_class: int, fraction: float) -> int:
    if not 0 < fraction <= 100:
        raise ValueError(f"fraction {fraction} outside (0, 100]")
    return max(1, min(n_class, int(round(n_class * fraction / 100))))


def stratified_subsets(train: pd.DataFrame, fractions: list[float], seed: int) -> dict[float, pd.DataFrame]:
    """``{fraction: rows of train}`` for every fraction, sorted by sample index."""
    labels = train.set_index("index")["label"]
    perms = class_permutations(labels, seed)
    out = {}
    for fraction in fractions:
        picked = np.concatenate([perm[: per_class_count(len(perm), fraction)] for perm in perms.values()])
        out[fraction] = pd.DataFrame({"index": np.sort(picked)}).merge(train[["index", "label"]], on="index")
    return out


def shot_subsets(train: pd.DataFrame, shots: list[int], seed: int) -> dict[int, pd.DataFrame]:
    """``{k: rows of train}``: k images of every class (all of a class with fewer, as Dassl's
    few-shot sampler without repetition), sorted by sample index — the few-shot benchmark's
    protocol. Each k takes the first k of the same per-class permutations as the fractions of
    ``seed``, so the shot subsets nest across k, and lie inside every fraction subset of the
    seed that takes at least k images of each class."""
    if any(int(k) < 1 for k in shots):
        raise ValueError(f"shots {sorted(shots)[0]} is not a positive number of images per class")
    perms = class_permutations(train.set_index("index")["label"], seed)
    out = {}
    for k in shots:
        picked = np.concatenate([perm[: int(k)] for perm in perms.values()])
        out[k] = pd.DataFrame({"index": np.sort(picked)}).merge(train[["index", "label"]], on="index")
    return out


def train_rows(samples: pd.DataFrame, source: str) -> pd.DataFrame:
    """The train split, refusing a class the dataset has but train lacks (it could never be subsampled)."""
    from medtune.data.store import DatasetError

    train = samples[samples["split"] == "train"]
    if train.empty:
        raise DatasetError(f"{source}: no 'train' split to subsample")
    absent = sorted(set(samples["label_name"]) - set(train["label_name"]))
    if absent:
        raise DatasetError(f"{source}: class {absent[0]!r} has no sample in the train split; cannot subsample it")
    return train
