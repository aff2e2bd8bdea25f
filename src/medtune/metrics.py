"""Classification metrics over predicted scores, computed by scikit-learn.

Binary tasks report the positive class (label 1: tumour in PCam, SSA in MHIST)
as the seeds do; tasks with more classes report macro averages and one-vs-rest
AUC. Top-k accuracy is reported overall and per sample group (body part).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


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
    }
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
