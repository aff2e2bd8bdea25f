"""k-nearest neighbours on frozen features, UNI's kNN protocol (k = 20).

Training features are centred by their mean and L2-normalised (SimpleShot's CL2N, as UNI's
``eval_knn`` does before its scikit-learn ``KNeighborsClassifier``); a test feature is centred
by the *training* mean and normalised the same way. Its ``k`` most cosine-similar training
features each cast one vote (scikit-learn's uniform weights; on unit vectors cosine similarity
ranks exactly as UNI's Euclidean distance does).

Logits are the log of each class's share of the votes, floored at 1e-6 for a class without
any: a softmax of the logits is the vote share itself (scikit-learn's ``predict_proba``),
AUC ranks images by it, and the argmax is the majority class.

Ties are broken deterministically: of training features equally similar at the k-th place,
the earlier ones in training order vote; of classes with equal votes, the lower class index
wins (the first maximum, as scikit-learn's mode). With fewer than ``k`` training features,
all of them vote. Nothing is trained: the head keeps the centred, normalised training
features and their labels (N x d floats) and compares test images with them in blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods._features import centre_normalise, labels_tensor, row_blocks, tensor

SPEC = {
    "training": "frozen",
    "requires": [],
    "label": "kNN",
    "order": 12,
    "defaults": {"k": 20},
    "params": {"k": {"type": "integer", "minimum": 1, "description": "neighbours that vote (UNI: 20)"}},
}

VOTE_FLOOR = 1e-6  # the vote share given to a class without votes, so its logit stays finite


def neighbour_votes(similarity: torch.Tensor, labels: torch.Tensor, n_classes: int, k: int) -> torch.Tensor:
    """Votes per class (rows x classes) of the ``k`` most similar columns of each row; among
    columns tied with the k-th similarity, the earliest columns fill the remaining places.

    The ``k + 1`` largest of a row say whether its voters are ambiguous: when the (k+1)-th is
    below the k-th, the top k are exactly the columns at or above the k-th similarity, whatever
    order ``topk`` returned them in. Only rows where more columns tie with the k-th than places
    are left go through the column-order rule, over the whole row (on every row, at PCam's 32,768
    test x 131,072 training images, that rule took 93-100 s of one thread; this, 9 s).
    """
    n_cols = similarity.shape[1]
    k = min(k, n_cols)
    if k == n_cols:  # every column votes
        return F.one_hot(labels, n_classes).float().sum(0).expand(len(similarity), n_classes).clone()
    votes = torch.zeros(len(similarity), n_classes, device=similarity.device)
    top = similarity.topk(k + 1, dim=1)
    votes.scatter_add_(1, labels[top.indices[:, :k]], torch.ones(len(similarity), k, device=similarity.device))
    crowded = (top.values[:, k] == top.values[:, k - 1]).nonzero().squeeze(1)
    if len(crowded):
        votes[crowded] = _votes_in_column_order(similarity[crowded], top.values[crowded, k - 1 : k], labels, n_classes, k)
    return votes


def _votes_in_column_order(similarity: torch.Tensor, kth: torch.Tensor, labels: torch.Tensor, n_classes: int, k: int) -> torch.Tensor:
    """:func:`neighbour_votes` by the tie rule itself, on every column of every row (``kth``: each
    row's k-th largest similarity, rows x 1)."""
    above = similarity > kth
    tied = similarity == kth
    places_left = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= places_left))
    return chosen.float() @ F.one_hot(labels, n_classes).float()


class KNNHead(nn.Module):
    def __init__(self, mean: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, n_classes: int, k: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("keys", keys)  # centred, normalised training features
        self.register_buffer("labels", labels)
        self.n_classes = int(n_classes)
        self.k = int(k)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = centre_normalise(features, self.mean)
        votes = torch.zeros(len(queries), self.n_classes, device=queries.device)
        for rows in row_blocks(len(queries), len(self.keys)):
            votes[rows] = neighbour_votes(queries[rows] @ self.keys.T, self.labels, self.n_classes, self.k)
        share = votes / min(self.k, len(self.keys))
        return torch.log(share.clamp_min(VOTE_FLOOR))


def fit(data, params, seed):
    x = tensor(data.train_features)
    mean = x.mean(0)
    state = {
        "mean": mean,
        "keys": centre_normalise(x, mean),
        "labels": labels_tensor(data.train_labels),
        "n_classes": data.class_count(),
        "k": int(params["k"]),
    }
    head = build_head(state)
    info = {"k": int(params["k"]), "voters": min(int(params["k"]), len(x)), "trainable_parameters": 0}
    if len(data.val_labels):
        from medtune.heads import accuracy

        info["val_accuracy"] = accuracy(head, data.val_features, data.val_labels)
    return state, info


def build_head(s: dict) -> nn.Module:
    return KNNHead(s["mean"], s["keys"], s["labels"], s["n_classes"], s["k"])

