"""SimpleShot: nearest class prototype on centred, L2-normalised features (CL2N), as UNI
evaluates it.

Training features are centred by their mean and normalised; a class's prototype is the mean of
its normalised training features (not renormalised, as UNI's ``eval_knn``). A test feature is
centred by the training mean, normalised, and given to the prototype at the smallest Euclidean
distance. Logits are the negative distances, so the argmax is the nearest prototype (ties: the
lower class index); their softmax is not a calibrated probability (distances lie in [0, 2]).
A class without training features has no prototype and a logit of -1e4: it never wins.
Nothing is trained; the head keeps the mean and one prototype per class.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.methods._features import centre_normalise, labels_tensor, tensor

SPEC = {
    "training": "frozen",
    "requires": [],
    "label": "SimpleShot",
    "order": 14,
    "defaults": {},
    "params": {},
}

ABSENT = -1e4  # logit of a class without a prototype


class PrototypeHead(nn.Module):
    def __init__(self, mean: torch.Tensor, prototypes: torch.Tensor, present: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("prototypes", prototypes)  # classes x d; rows of absent classes are zero
        self.register_buffer("present", present)  # classes, bool

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # the exact difference-based distance, not the faster matrix-product form that loses digits
        queries = centre_normalise(features, self.mean)
        distance = torch.cdist(queries, self.prototypes, compute_mode="donot_use_mm_for_euclid_dist")
        return torch.where(self.present, -distance, torch.full_like(distance, ABSENT))


def fit(data, params, seed):
    x, y = tensor(data.train_features), labels_tensor(data.train_labels)
    n_classes = data.class_count()
    mean = x.mean(0)
    normalised = centre_normalise(x, mean)
    counts = torch.bincount(y, minlength=n_classes).float()
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, y, normalised)
    present = counts > 0
    prototypes = torch.where(present[:, None], sums / counts.clamp_min(1)[:, None], torch.zeros_like(sums))
    state = {"mean": mean, "prototypes": prototypes, "present": present}
    info = {"classes_with_prototype": int(present.sum()), "trainable_parameters": 0}
    if len(data.val_labels):
        from medtune.heads import accuracy

        info["val_accuracy"] = accuracy(build_head(state), data.val_features, data.val_labels)
    return state, info


def build_head(s: dict) -> nn.Module:
    return PrototypeHead(s["mean"], s["prototypes"], s["present"])
