"""A method registered from outside the package (config key ``method_modules``): the
workflow test runs it to the tables, as a user's own method would be."""

import numpy as np
import torch
from torch import nn

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],  # absent classes keep their prompt feature
    "label": "toy centroids",
    "order": 90,
    "defaults": {"temperature": 10.0},
    "params": {"temperature": {"type": "number", "exclusiveMinimum": 0}},
}


def fit(data, params, seed):
    """Each class's mean training feature, normalised; absent classes keep their prompt feature."""
    weight = np.array(data.class_text, dtype=np.float32, copy=True)
    for c in np.unique(data.train_labels):
        mean = np.asarray(data.train_features)[data.train_labels == c].mean(0)
        weight[c] = mean / np.linalg.norm(mean)
    return {"weight": torch.from_numpy(weight), "temperature": float(params["temperature"])}, {"classes": len(weight)}


def build_head(state):
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0], bias=False)
    head.weight.data.copy_(state["weight"] * state["temperature"])
    return head
