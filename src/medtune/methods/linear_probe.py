"""Linear probe: scikit-learn logistic regression on frozen features, C chosen on validation
(as in CLIP's and CLIP_benchmark's linear-probe protocol)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

SPEC = {
    "training": "frozen",
    "label": "linear probe",
    "order": 10,
    "defaults": {"C": [0.01, 0.1, 1.0, 10.0, 100.0], "max_iter": 1000},
    "params": {
        "C": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
        "max_iter": {"type": "integer", "minimum": 1},
    },
}


def fit(data, params, seed):
    n_classes = data.class_text.shape[0]
    present = np.unique(data.train_labels)
    scores, best = {}, None
    for C in params["C"]:
        if len(present) < 2:
            break  # one class: the probe can only predict it
        clf = LogisticRegression(C=C, max_iter=params.get("max_iter", 1000), random_state=seed)
        clf.fit(data.train_features, data.train_labels)
        scores[C] = float(clf.score(data.val_features, data.val_labels))
        if best is None or scores[C] > scores[best[0]]:
            best = (C, clf)
    dim = data.train_features.shape[1]
    weight, bias = np.zeros((n_classes, dim), np.float32), np.zeros(n_classes, np.float32)
    if best is None:
        bias[present[0]] = 1.0
    else:
        clf = best[1]
        if len(clf.classes_) == 2:
            # sklearn keeps one row for two classes: logit(c1) - logit(c0) = w.f + b
            weight[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        else:
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
        # classes absent from the subset never win
        absent = np.setdiff1d(np.arange(n_classes), clf.classes_)
        bias[absent] = -1e4
    state = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
    return state, {"C": best[0] if best else None, "val_accuracy_by_C": {str(k): v for k, v in scores.items()}}


def build_head(s: dict) -> nn.Module:
    head = nn.Linear(s["weight"].shape[1], s["weight"].shape[0])
    head.weight.data.copy_(s["weight"])
    head.bias.data.copy_(s["bias"])
    return head
