"""Classification metrics over predicted scores, computed by scikit-learn.

Binary tasks report the positive class (label 1: tumour in PCam, SSA in MHIST)
as the seeds do; tasks with more classes report macro averages and one-vs-rest
AUC. Top-k accuracy is reported overall and per sample group (body part).
Balanced accuracy (the mean of per-class recall) is scikit-learn's; the expected
calibration error (ECE) is torchmetrics' top-label definition over the softmax, with
15 bins (torchmetrics' default) and 5 (THUNDER's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


ECE_BINS = (15, 5)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    n_classes = logits.shape[1]
    probs = softmax(logits.astype(np.float64))
    preds = probs.argmax(axis=1)
    all_labels = np.arange(n_classes)
    average = "binary" if n_classes == 2 else "macro"
    out = {
        "accuracy": skm.accuracy_score(labels, preds),
        "precision": skm.precision_score(labels, preds, average=average, labels=all_labels, zero_division=0),
        "recall": skm.recall_score(labels, preds, average=average, labels=all_labels, zero_division=0),
        "f1": skm.f1_score(labels, preds, average=average, labels=all_labels, zero_division=0),
        "auc": _auc(labels, probs),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
    }
    for bins in ECE_BINS:
        out[f"ece{bins}"] = expected_calibration_error(labels, probs, bins)
    for k in (1, 3):
        if k < n_classes:
            out[f"top{k}"] = top_k_accuracy(labels, logits, k)
    return {name: float(value) for name, value in out.items()}


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")  # undefined with one class in the evaluation set
    if probs.shape[1] == 2:
        return skm.roc_auc_score(labels, probs[:, 1])
    if len(present) < probs.shape[1]:
        return float("nan")
    return skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")


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
