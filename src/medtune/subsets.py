"""Stratified, nested, seeded training subsets: a share of each class (fractions) or a number of
images of each class (shots).

For each class a seeded permutation of its training samples is drawn once; the
subset at fraction f takes a prefix of each permutation. Prefixes of one
permutation nest by construction (the 0.1 % subset lies inside the 1 % subset of
the same seed, as long as the per-class counts grow with f, which both rules
below do) and every class keeps a sample. How long each prefix is depends on the
dataset's ``class_balance``:

* ``proportional`` (default): ``max(1, round(f% * n_class))`` of each class, so the
  subset keeps the training split's class proportions;
* ``equal``: the same count for every class, ``floor(N * f% / n_classes)`` with N the
  size of the train split (at least 1), as CLIPath's ``cal_train_index`` draws half
  of its images from each of PCam's two classes. When a class has fewer samples than
  that count, every class gets as many as the smallest class has (the subset stays
  balanced and is then smaller than f% of N).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

BALANCES = ("proportional", "equal")
SUBSET_COLUMNS = ["index", "split", "label", "label_name"]  # what subsampling reads of samples.csv


def class_permutations(labels: pd.Series, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        int(label): rng.permutation(group.index.to_numpy())
        for label, group in labels.groupby(labels, sort=True)
    }


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 100:
        raise ValueError(f"fraction {fraction} outside (0, 100]")


def per_class_count(n_class: int, fraction: float) -> int:
    _check_fraction(fraction)
    return max(1, min(n_class, int(round(n_class * fraction / 100))))


def equal_count(class_sizes: list[int], fraction: float) -> int:
    """Samples of every class under ``equal``: floor(N * fraction% / n_classes), at least 1,
    at most the smallest class. Exact arithmetic on the fraction as written (0.1, not
    0.1000000000000000055...), so 1000 images at 0.3 % over 3 classes give 1, not 0.99..."""
    _check_fraction(fraction)
    n, n_classes = sum(class_sizes), len(class_sizes)
    wanted = Fraction(str(fraction)) * n / (100 * n_classes)
    return max(1, min(min(class_sizes), int(wanted)))


def class_counts(class_sizes: dict[int, int], fraction: float, balance: str = "proportional") -> dict[int, int]:
    """``{label: samples drawn}`` for one fraction."""
    if balance == "equal":
        count = equal_count(list(class_sizes.values()), fraction)
        return {label: count for label in class_sizes}
    if balance == "proportional":
        return {label: per_class_count(n, fraction) for label, n in class_sizes.items()}
    raise ValueError(f"class_balance {balance!r}: choose one of {', '.join(BALANCES)}")


def stratified_subsets(
    train: pd.DataFrame, fractions: list[float], seed: int, balance: str = "proportional"
) -> dict[float, pd.DataFrame]:
    """``{fraction: rows of train}`` for every fraction, sorted by sample index."""
    labels = train.set_index("index")["label"]
    perms = class_permutations(labels, seed)
    sizes = {label: len(perm) for label, perm in perms.items()}
    out = {}
    for fraction in fractions:
        counts = class_counts(sizes, fraction, balance)
        picked = np.concatenate([perm[: counts[label]] for label, perm in perms.items()])
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


def seed_subsets(
    train: pd.DataFrame, seed: int, fractions: list[str], shots: list[int], balance: str = "proportional"
) -> dict[str, pd.DataFrame]:
    """Every training subset of one seed by its name (``frac{fraction}``, fractions spelled as
    in paths, and ``shots{k}``), exactly as :func:`stratified_subsets` and :func:`shot_subsets`
    draw them one by one: what the subsample job writes for each seed."""
    out = {f"frac{f}": rows for f, rows in zip(fractions, stratified_subsets(train, [float(f) for f in fractions], seed, balance).values())}
    out.update({f"shots{k}": rows for k, rows in shot_subsets(train, [int(k) for k in shots], seed).items()})
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
