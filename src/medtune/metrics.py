"""Classification metrics over predicted scores, as scikit-learn computes them.

Binary tasks report the positive class (label 1: tumour in PCam, SSA in MHIST)
as the seeds do; tasks with more classes report macro averages and one-vs-rest
AUC. Top-k accuracy is reported overall and per sample group (body part).
Balanced accuracy (the mean of per-class recall) is scikit-learn's
``balanced_accuracy_score``; the expected calibration error (ECE) is torchmetrics'
top-label definition over the softmax, with 15 bins (torchmetrics' default) and 5 (THUNDER's).

Written with numpy (``tests/test_metrics.py`` checks them against scikit-learn's
``precision_score``, ``recall_score``, ``f1_score`` with ``zero_division=0``,
``roc_auc_score`` and ``balanced_accuracy_score``): importing ``sklearn.metrics``
costs two seconds of every evaluating job, longer than most evaluations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


ECE_BINS = (15, 5)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    n_classes = logits.shape[1]
    labels = np.asarray(labels)
    probs = softmax(logits.astype(np.float64))
    preds = probs.argmax(axis=1)
    precision, recall, f1 = _per_class_prf(labels, preds, n_classes)
    pick = [1] if n_classes == 2 else slice(None)  # binary: the positive class; else the macro mean
    out = {
        "accuracy": float((preds == labels).mean()),
        "precision": float(precision[pick].mean()),
        "recall": float(recall[pick].mean()),
        "f1": float(f1[pick].mean()),
        "auc": _auc(labels, probs),
        # over the classes the labels hold, as balanced_accuracy_score (a class only predicted is left out)
        "balanced_accuracy": float(recall[_present(labels, n_classes)].mean()),
    }
    for bins in ECE_BINS:
        out[f"ece{bins}"] = expected_calibration_error(labels, probs, bins)
    for k in (1, 3):
        if k < n_classes:
            out[f"top{k}"] = top_k_accuracy(labels, logits, k)
    return {name: float(value) for name, value in out.items()}


def _per_class_prf(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of every class; 0 where undefined (zero_division=0)."""
    true_pos = np.bincount(labels[preds == labels], minlength=n_classes)[:n_classes].astype(np.float64)
    predicted = np.bincount(preds, minlength=n_classes)[:n_classes].astype(np.float64)
    actual = np.bincount(labels, minlength=n_classes)[:n_classes].astype(np.float64)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return ratio(true_pos, predicted), ratio(true_pos, actual), ratio(2 * true_pos, predicted + actual)


def _present(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes)[:n_classes] > 0


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")  # undefined with one class in the evaluation set
    if probs.shape[1] == 2:
        return binary_auc(labels == 1, probs[:, 1])
    if len(present) < probs.shape[1]:
        return float("nan")
    # one-vs-rest, unweighted mean over classes (roc_auc_score(multi_class="ovr", average="macro"))
    return float(np.mean([binary_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]))


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outranks a negative, ties counting
    one half (the Mann-Whitney statistic, equal to the trapezoidal area roc_auc_score takes)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = np.asarray(scores)[order]
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    stops = np.r_[starts[1:], len(ordered)]
    ranks = np.empty(len(ordered), dtype=np.float64)
    ranks[order] = np.repeat((starts + stops + 1) / 2, stops - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Top-label reliability over ``n_bins`` equal-width confidence bins, as torchmetrics'
    ``MulticlassCalibrationError`` bins them: confidence is the largest class probability,
    bin ``k`` holds ``k/n <= confidence < (k+1)/n``, and a confidence of exactly 1 gets a
    bin of its own (torchmetrics' ``bucketize(right=True)`` over ``n+1`` boundaries).

    Returns per bin (``n_bins + 1`` entries, the last being confidence 1): ``count``,
    mean ``confidence`` and ``accuracy`` (0 where the bin is empty).
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges, confidence, side="right") - 1
    count = np.bincount(index, minlength=n_bins + 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.nan_to_num(np.bincount(index, confidence, minlength=n_bins + 1) / count)
        mean_acc = np.nan_to_num(np.bincount(index, correct, minlength=n_bins + 1) / count)
    return {"count": count, "confidence": mean_conf, "accuracy": mean_acc, "edges": edges}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of the images."""
    bins = calibration_bins(labels, probs, n_bins)
    share = bins["count"] / bins["count"].sum()
    return float(np.sum(np.abs(bins["accuracy"] - bins["confidence"]) * share))


def top_k_accuracy(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    # sklearn's top_k_accuracy_score rejects 2-column scores for binary labels; ranking is all it does
    ranked = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]
    return float((ranked == np.asarray(labels)[:, None]).any(axis=1).mean())


def per_group_top_k(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray, ks=(1, 3)) -> pd.DataFrame:
    """Rows ``group, metric, value``: top-k accuracy within each group."""
    rows = []
    ks = [k for k in ks if k < logits.shape[1]]
    for group in sorted(set(groups)):
        mask = groups == group
        for k in ks:
            rows.append((group, f"top{k}", top_k_accuracy(labels[mask], logits[mask], k)))
    return pd.DataFrame(rows, columns=["group", "metric", "value"])
