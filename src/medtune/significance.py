"""Paired comparisons between methods: is a difference in accuracy real?

Every trained method is compared with every other method of a study on identical
subsets and seeds (the same seed draws the same training subset for every method), so
differences are paired. A run's data usage is a share of the training data (``fraction``)
or k images per class (``shots``); runs pair on seed and usage. Three views of each
comparison:

- over training seeds, per fraction or shot count: the mean paired difference with its
  95 % t-interval, and the paired t-test's p-value (from the per-run rows of ``metrics.csv``);
- over test images, per fraction or shot count: a paired bootstrap (the same resampled
  images for both methods and every seed, the difference averaged over seeds) of the
  accuracy and AUC differences, from each run's ``predictions.npz``; a percentile interval,
  and a two-sided p-value from the bootstrap standard error (see :func:`bootstrap_difference`);
- over everything, per pair of methods: Wilcoxon's signed-rank test (SciPy) on the
  accuracy differences of all (seed, usage) pairs.

A method without training data (zero-shot) has one run, paired with every (seed, usage)
of the other method. p-values are Holm-corrected within each test's column of a table
(:func:`holm`).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from medtune.metrics import softmax
from medtune.records import read_predictions
from medtune.tables import mean_ci, of_study

N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
ALPHA = 0.05
_CHUNK = 100  # resamples drawn at once: bounds the draws' memory at CHUNK x test images
USAGE = ["fraction", "shots"]  # a run's data usage: one of them is set, the other NaN (both NaN: no training data)
COMPARISON_COLUMNS = [
    "dataset", "backbone", "method", "reference", "fraction", "shots", "n_seeds",
    "accuracy_diff", "accuracy_diff_ci95", "p_t", "p_t_holm", "auc_diff", "auc_diff_ci95",
    "boot_accuracy_low", "boot_accuracy_high", "p_boot_accuracy", "p_boot_accuracy_holm",
    "boot_auc_low", "boot_auc_high", "p_boot_auc", "p_boot_auc_holm",
    "n_pairs", "p_wilcoxon", "p_wilcoxon_holm",
]


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest of m
    is multiplied by m - i + 1, then made non-decreasing, capped at 1. NaN (no test) stays
    NaN and does not count in m."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def paired_t(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired differences, half-width of its 95 % t-interval (the tables' interval)
    and the two-sided t-test p-value; p is NaN with one difference or none that vary."""
    d = np.asarray(differences, dtype=float)
    mean, half, n = mean_ci(pd.Series(d))
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if n >= 2 and np.ptp(d) > 0 else float("nan")
    return mean, half, p


def signed_rank(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (SciPy; zero differences dropped, as Wilcoxon
    did); 1 when every difference is zero, NaN with none."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


# ---- bootstrap over test images -------------------------------------------------------


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of ``n`` images as a resamples x images array: how many times each
    image is drawn (n draws with replacement) in each resample, the same for every run so that
    differences pair. Integer counts in the smallest unsigned type that holds the largest, drawn
    ``_CHUNK`` resamples at a time (a chunk's draws are CHUNK x n int64)."""
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n), np.min_scalar_type(n))
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]  # one bincount for the chunk
        counts[start : start + size] = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
    # an image is rarely drawn more than a few times: one byte a count halves what the AUC gathers
    return counts.astype(np.min_scalar_type(int(counts.max(initial=0))))


def _sum_dtype(weights: np.ndarray):
    """Integer weights (resample counts) add up exactly as int64; any others as float64."""
    return np.int64 if np.issubdtype(weights.dtype, np.integer) else np.float64


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one score against binary labels under each row of ``weights`` (resamples x
    images: images counted that many times); ties count a half, as in scikit-learn. NaN
    without positives or negatives.

    Every positive wins against the negatives scored below it and half of those tied with it:
    with the images sorted by score once, a positive's share is the cumulative weight of the
    negatives up to the start and to the end of its group of tied scores, read for every
    resample at once from one cumulative sum along the negatives."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    # each image's group of tied scores, as [first, last + 1) positions in the sorted order
    new = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(scores)]
    negatives_up_to = np.r_[0, np.cumsum(~sorted_positive)]  # negatives among the first k sorted images
    below = negatives_up_to[starts[group]][sorted_positive]
    through = negatives_up_to[ends[group]][sorted_positive]
    # integer counts: cumulative sums in int32 where twice a resample's total fits (NumPy's
    # cumsum from one-byte counts is about four times faster into int32 than into int16 or
    # int64 here), products in int64
    dtype = _sum_dtype(weights)
    if dtype is np.int64 and 2 * int(weights.sum(axis=1, dtype=np.int64).max(initial=0)) < 2**31:
        dtype = np.int32
    cumulative = np.zeros((len(weights), len(scores) - len(below) + 1), dtype)
    np.cumsum(np.take(weights, order[~sorted_positive], axis=1), axis=1, dtype=dtype, out=cumulative[:, 1:])
    positive_weights = np.take(weights, order[sorted_positive], axis=1)
    # twice the wins: the negatives below plus those through the tie group
    twice_wins = np.einsum("ri,ri->r", positive_weights, np.take(cumulative, below, axis=1) + np.take(cumulative, through, axis=1),
                           dtype=_sum_dtype(weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (twice_wins / 2) / (positive_weights.sum(axis=1, dtype=np.float64) * cumulative[:, -1].astype(np.float64))


def weighted_metrics(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and AUC (as :func:`medtune.metrics.classification_metrics` defines them:
    the positive class's softmax for two classes, the macro one-vs-rest mean for more)
    under each row of ``weights`` (resamples x images), all rows at once."""
    weights = np.asarray(weights)
    probs = softmax(np.asarray(logits, dtype=np.float64))
    correct = probs.argmax(axis=1) == labels
    accuracy = np.take(weights, np.flatnonzero(correct), axis=1).sum(axis=1, dtype=_sum_dtype(weights)) / weights.sum(axis=1, dtype=np.float64)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    auc = np.mean([weighted_auc(probs[:, c], labels == c, weights) for c in classes], axis=0)
    return accuracy, auc


@lru_cache(maxsize=4)
def bootstrap_runs(paths: tuple[str, ...], n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, tuple]:
    """Per predictions file: its accuracy and AUC on the test images and on each of
    ``n_resamples`` resamples of them, ``{path: (observed (2,), resampled (2, n_resamples))}``.
    Every file must hold the same images in the same order. Each run's metrics come for all
    resamples at once, from one resamples x images array of counts. Cached: the significance
    table and the accuracy table's markers of one ``tables`` job share one bootstrap."""
    saved = {p: read_predictions(p) for p in paths}
    first = saved[paths[0]]
    for path, p in saved.items():
        if not np.array_equal(p["index"], first["index"]) or not np.array_equal(p["labels"], first["labels"]):
            raise ValueError(f"{path}: its test images differ from those of {paths[0]}; paired resampling needs the same split")
    n = len(first["labels"])
    counts = resample_counts(n, n_resamples, seed)
    ones = np.ones((1, n), counts.dtype)
    return {
        path: (np.stack(weighted_metrics(p["logits"], p["labels"], ones))[:, 0], np.stack(weighted_metrics(p["logits"], p["labels"], counts)))
        for path, p in saved.items()
    }


def bootstrap_difference(a: list[tuple], b: list[tuple]) -> tuple[float, float, float]:
    """Percentile 95 % interval and two-sided p-value of the seed-averaged difference
    ``a - b``; each entry is one seed's ``(observed metric, its resamples)``, resamples
    paired across a and b.

    The p-value is the normal one of the observed difference over the bootstrap standard
    error, ``2 (1 - Phi(|d| / se))``, not the share of resamples beyond zero: that share
    cannot go below 1/1001 with 1,000 resamples, and Holm's correction over a table of
    tens of comparisons would multiply that floor past 0.05 whatever the difference."""
    observed = float(np.mean([x - y for (x, _), (y, _) in zip(a, b)]))
    diff = np.mean([x - y for (_, x), (_, y) in zip(a, b)], axis=0)
    diff = diff[~np.isnan(diff)]
    if len(diff) < 2 or np.isnan(observed):
        return float("nan"), float("nan"), float("nan")
    low, high = np.percentile(diff, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    se = diff.std(ddof=1)
    if se == 0:
        return float(low), float(high), 1.0 if observed == 0 else float("nan")
    return float(low), float(high), float(2 * stats.norm.sf(abs(observed) / se))


# ---- the comparisons of a study --------------------------------------------------------


def _number(value, kind):
    return None if value is None or pd.isna(value) else kind(value)


def _key(method: str, seed, fraction, shots=None) -> tuple:
    return (method, _number(seed, int), _number(fraction, float), _number(shots, int))


def clean_values(metrics: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Clean-test accuracy and AUC of every run of the study: one row per run, ``fraction``
    NaN for runs on k images per class (``shots``), both NaN for methods without training data."""
    if "shots" not in metrics:
        metrics = metrics.assign(shots=np.nan)
    m = metrics[
        metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"])
        & of_study(metrics["method"], study)
        & (metrics["condition"] == "clean")
        & (metrics["group"] == "all")
        & metrics["metric"].isin(["accuracy", "auc"])
    ]
    keys = ["dataset", "backbone", "method", "seed", *USAGE]
    # pivoting drops NaN keys: a run without training data has seed, fraction and shots NaN
    unset = {k: -1 for k in ("seed", *USAGE)}
    m = m.assign(**{k: pd.to_numeric(m[k]).fillna(-1) for k in unset})
    wide = m.pivot_table(index=keys, columns="metric", values="value", sort=False).reset_index()
    wide = wide.reindex(columns=[*keys, "accuracy", "auc"]).replace({k: {-1: np.nan} for k in unset})
    return wide.dropna(subset=["accuracy"])


def _pairs(values: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Rows (seed, usage, accuracy and AUC of a and of b) paired on seed and data usage
    (fraction or shot count); a method without training data pairs with every run of the
    other. Shot counts first, then fractions, each ascending (the accuracy table's order)."""
    ra, rb = values[values["method"] == a], values[values["method"] == b]
    untrained_a, untrained_b = ra["seed"].isna().all(), rb["seed"].isna().all()
    if untrained_a and untrained_b:
        return pd.DataFrame()
    if untrained_b:
        paired = ra.assign(_j=0).merge(rb.assign(_j=0)[["_j", "accuracy", "auc"]], on="_j", suffixes=("_a", "_b"))
    elif untrained_a:
        paired = rb.assign(_j=0).merge(ra.assign(_j=0)[["_j", "accuracy", "auc"]], on="_j", suffixes=("_b", "_a"))
    else:
        on = ["seed", *USAGE]
        # NaN keys (the usage a run does not have) pair as -1, never by pandas' NaN matching
        fill = lambda r: r.assign(**{k: r[k].fillna(-1) for k in USAGE})
        paired = fill(ra).merge(fill(rb)[[*on, "accuracy", "auc"]], on=on, suffixes=("_a", "_b"))
        paired = paired.replace({k: {-1: np.nan} for k in USAGE})
    return paired.sort_values(["shots", "fraction", "seed"], na_position="last").reset_index(drop=True)


def compare(metrics: pd.DataFrame, study: dict, runs: list[dict[str, Any]] = (), methods: dict | None = None,
            n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Every pair of methods (one of them trained) of the study, per dataset and backbone:
    rows per data usage (``fraction`` or ``shots`` set), then one row per pair with both NaN
    holding the signed-rank test over all its (seed, usage) pairs. ``method`` is compared with ``reference``
    (the earlier of the two in the methods' declared ``order``, as tables list them);
    differences are ``method - reference``.
    ``runs`` (manifest entries, :func:`medtune.records.read_runs`) give the predictions
    to bootstrap; without them the bootstrap columns are NaN."""
    values = clean_values(metrics, study)
    predictions = {
        (r["dataset"], r["backbone"], *_key(r["method"], r["seed"], r["fraction"], r.get("shots"))): r["files"]["predictions"]
        for r in runs
        if "predictions" in r.get("files", {}) and r["dataset"] in study["datasets"]
        and r["backbone"] in study["backbones"] and bool(of_study([r["method"]], study).iloc[0])  # a stage's runs too
    }
    methods = methods or {}
    rank = lambda m: (methods.get(m.split("+")[0], {}).get("order", float("inf")), m)
    rows = []
    for (dataset, backbone), group in values.groupby(["dataset", "backbone"], sort=False):
        ordered = sorted(dict.fromkeys(group["method"]), key=rank)
        mine = sorted(p for (d, b, *_), p in predictions.items() if (d, b) == (dataset, backbone))
        boot = bootstrap_runs(tuple(mine), n_resamples, seed) if mine else {}
        for reference, method in combinations(ordered, 2):
            paired = _pairs(group, method, reference)
            if paired.empty:
                continue
            for (fraction, shots), at in paired.groupby(USAGE, sort=False, dropna=False):
                rows.append(_usage_row(dataset, backbone, method, reference, fraction, shots, at, predictions, boot))
            d = (paired["accuracy_a"] - paired["accuracy_b"]).to_numpy()
            rows.append({"dataset": dataset, "backbone": backbone, "method": method, "reference": reference,
                         "fraction": np.nan, "shots": np.nan, "n_pairs": len(d), "accuracy_diff": float(d.mean()),
                         "p_wilcoxon": signed_rank(d)})
    table = pd.DataFrame(rows).reindex(columns=COMPARISON_COLUMNS)
    for test in ("p_t", "p_boot_accuracy", "p_boot_auc", "p_wilcoxon"):
        table[f"{test}_holm"] = holm(table[test])
    return table


def per_usage(comparisons: pd.DataFrame) -> pd.Series:
    """Which rows of :func:`compare`'s table are of one fraction or shot count (the others
    hold a pair's signed-rank test over all its runs)."""
    return comparisons["fraction"].notna() | comparisons["shots"].notna()


def _usage_row(dataset, backbone, method, reference, fraction, shots, at: pd.DataFrame, predictions: dict, boot: dict) -> dict:
    acc, acc_ci, p_t = paired_t((at["accuracy_a"] - at["accuracy_b"]).to_numpy())
    auc, auc_ci, _ = paired_t((at["auc_a"] - at["auc_b"]).to_numpy())
    row = {"dataset": dataset, "backbone": backbone, "method": method, "reference": reference, "fraction": fraction, "shots": shots,
           "n_seeds": len(at), "accuracy_diff": acc, "accuracy_diff_ci95": acc_ci, "p_t": p_t, "auc_diff": auc, "auc_diff_ci95": auc_ci}
    files = []
    for seed in at["seed"]:
        pair = [predictions.get((dataset, backbone, *_key(m, seed, fraction, shots))) or predictions.get((dataset, backbone, *_key(m, None, None)))
                for m in (method, reference)]
        if None in pair:
            return row  # a run without saved predictions (a WiSE-FT mix): no bootstrap
        files.append(pair)
    for i, name in enumerate(("accuracy", "auc")):
        a = [(boot[fa][0][i], boot[fa][1][i]) for fa, _ in files]
        b = [(boot[fb][0][i], boot[fb][1][i]) for _, fb in files]
        low, high, p = bootstrap_difference(a, b)
        row |= {f"boot_{name}_low": low, f"boot_{name}_high": high, f"p_boot_{name}": p}
    return row


def winners(comparisons: pd.DataFrame, accuracy: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Which trained method beats, at which data usage (fraction or shot count), the methods
    without training data (``beats_zeroshot``) and the most accurate other trained method at
    that usage (``beats_best_baseline``).

    ``accuracy``: mean clean accuracy per dataset, backbone, method, fraction and shots (0
    where one does not apply, as :func:`medtune.tables.fill_unused_labels` sets them: both 0
    for methods without training data; a frame without ``shots`` has fraction runs only).
    "Beats" means a positive difference that every test made at that usage finds
    significant after Holm's correction: the t-test over seeds (with two or more seeds that
    vary) and the bootstrap over test images (where both runs saved predictions); with
    neither, nothing is claimed.
    """
    usage_of = lambda fraction, shots: (0.0 if pd.isna(fraction) else float(fraction), 0 if pd.isna(shots) else int(shots))
    significant = {}
    for r in comparisons[per_usage(comparisons)].itertuples():
        tests = [p for p in (r.p_t_holm, r.p_boot_accuracy_holm) if not np.isnan(p)]
        ok = bool(tests) and all(p < alpha for p in tests)
        key = (r.dataset, r.backbone, *usage_of(r.fraction, r.shots))
        significant[(*key, r.method, r.reference)] = ok and r.accuracy_diff > 0
        significant[(*key, r.reference, r.method)] = ok and r.accuracy_diff < 0
    if "shots" not in accuracy:
        accuracy = accuracy.assign(shots=0)
    accuracy = accuracy.assign(fraction=accuracy["fraction"].fillna(0.0), shots=accuracy["shots"].fillna(0).astype(int))
    rows = []
    trained = (accuracy["fraction"] > 0) | (accuracy["shots"] > 0)
    untrained = set(accuracy.loc[~trained, "method"])
    for (dataset, backbone, fraction, shots), at in accuracy[trained].groupby(["dataset", "backbone", "fraction", "shots"]):
        refs = accuracy[(accuracy["dataset"] == dataset) & (accuracy["backbone"] == backbone) & accuracy["method"].isin(untrained)]
        for method in at["method"]:
            key = (dataset, backbone, *usage_of(fraction, shots), method)
            others = at[at["method"] != method].dropna(subset=["accuracy_mean"])
            best = others.loc[others["accuracy_mean"].idxmax(), "method"] if len(others) else None
            rows.append({
                "dataset": dataset, "backbone": backbone, "method": method, "fraction": fraction, "shots": shots,
                "beats_zeroshot": bool(len(refs)) and all(significant.get((*key, ref), False) for ref in refs["method"]),
                "best_baseline": best,
                "beats_best_baseline": best is not None and significant.get((*key, best), False),
            })
    columns = ["dataset", "backbone", "method", "fraction", "shots", "beats_zeroshot", "best_baseline", "beats_best_baseline"]
    return pd.DataFrame(rows, columns=columns)
