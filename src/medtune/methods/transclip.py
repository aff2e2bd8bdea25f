"""TransCLIP (Zanella, Gérin & Ben Ayed, NeurIPS 2024; ``MaxZanella/transduction-for-vlms``,
``TransCLIP_solver/TransCLIP.py`` and ``TransCLIP_utils.py``): a transductive stage on top of
another method. It takes that method's test predictions ``ŷ`` (softmax of its logits) and the
test features, fits a Gaussian mixture with one shared diagonal covariance to the test set, and
re-assigns every test image by block-coordinate updates::

    z_i ∝ ŷ_i^λ ⊙ exp( (1/50) log N(f_i | μ_k, diag σ²) + (1/(2n)) Σ_j (W_ij + W_ji) z_j )

with ``W`` the cosine similarities to each image's n = 3 nearest test images (the top-1, the
image itself, dropped: ``topk(n + 1)[:, 1:]``), 5 z-steps per outer iteration, 10 outer
iterations of closed-form μ (L2-normalised) and σ² updates (``update_mu``, ``update_sigma``),
σ² starting at 1/d. Zero-shot (the base had no training images): λ = 1, μ starts at the mean of
``z_ik f_i`` over each class's 8 most confident test images. Few-shot: λ = 0.5, the support
images join the graph as labelled nodes (one-hot z), μ starts at each class's support mean,
and the support weighs into μ and σ² with ``γ · 50 / |S|`` against ``1 / |Q|`` for the test
set; γ is chosen on a few validation images (at most 4 per class, ``min(shots, 4)`` upstream;
each predicted by the z of its nearest test image) over 0.002, 0.01, 0.02, 0.2, tried in turn,
each continuing from the state the previous one left, as upstream's loop does; ties keep the
earlier γ.

Departure from upstream: in the few-shot graph, upstream stacks the affinity rows support-first
(``build_affinity_matrix``: ``cat(support @ queryᵀ, query @ queryᵀ)``) but the assignments
query-first (``update_z``: ``cat(z, one_hot(support))``), so ``Wᵀ z`` and ``(W z)[:Q]`` pair
rows of different images, shifted by |S|. Here rows and assignments are both ordered test
images then support images, as the paper's formula reads. Zero-shot has no support rows and is
upstream's exactly.

The head is transductive: its logits (``log z``) for one image depend on every image it is
given at once, so evaluation gives it each condition's whole test split, as upstream does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.heads import build_head as build_base_head
from medtune.methods._features import labels_tensor, row_blocks, tensor

SPEC = {
    "training": "transductive",
    "requires": [],
    "label": "TransCLIP",
    "order": 90,  # its runs, ``{base}+transclip``, sort right after their base
    "defaults": {
        "methods": ["zeroshot"],
        # TransCLIP.py: "max_iter = 10", "n_neighbors = 3", "std_init = 1 / d"; update_z: max_iter=5
        "iterations": 10,
        "z_steps": 5,
        "neighbours": 3,
        # TransCLIP_utils.get_parameters: zero-shot lambda 1, gamma [0]; few-shot lambda 0.5 and
        "lambda_zero_shot": 1.0,
        "lambda_few_shot": 0.5,
        "gammas": [0.002, 0.01, 0.02, 0.2],
        "confident": 8,        # init_mu: "n_most_confident = 8"
        "val_per_class": 4,    # datasets/*.py: "n_shots_val = min(num_shots, 4)"
    },
    "params": {
        "methods": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "uniqueItems": True,
            "description": "the methods whose test predictions it refines (zero-shot or frozen-feature methods of the same study)",
        },
        "iterations": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "outer iterations of the solver (upstream TransCLIP.py max_iter: 10)"},
        "z_steps": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "assignment updates an iteration (upstream update_z max_iter: 5)"},
        "neighbours": {"type": "integer", "minimum": 1, "maximum": 100, "description": "nearest test images in the affinity graph (upstream n_neighbors: 3)"},
        "lambda_zero_shot": {"type": "number", "minimum": 0, "description": "weight of the KL term towards the initial predictions on a zero-shot base (upstream get_parameters: 1)"},
        "lambda_few_shot": {"type": "number", "minimum": 0, "description": "the same weight on a few-shot base (upstream: 0.5)"},
        "gammas": {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1, "description": "candidate weights of the graph term; a few-shot base chooses on its validation shots (upstream get_parameters)"},
        "confident": {"type": "integer", "minimum": 1, "description": "most confident test images a class that initialise its mean (upstream init_mu: 8)"},
        "val_per_class": {"type": "integer", "minimum": 1, "description": "validation images a class the few-shot choice of gamma may look at, at most the class's shots (upstream: 4)"},
    },
}
TEMPERATURE = 50.0  # the 50 of update_z and of the support weights in update_mu / update_sigma


def knn_graph(nodes: torch.Tensor, queries: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node's ``n`` most similar test images after its most similar one (for a test image,
    itself), as indices into ``queries`` and their cosine similarities (R x n each), computed in
    row blocks so no R x Q matrix is held."""
    index, value = [], []
    k = min(n + 1, len(queries))
    for rows in row_blocks(len(nodes), len(queries)):
        top = (nodes[rows] @ queries.T).topk(k, dim=1)
        index.append(top.indices[:, 1:])
        value.append(top.values[:, 1:])
    return torch.cat(index), torch.cat(value)


def propagate(z: torch.Tensor, index: torch.Tensor, value: torch.Tensor, n_queries: int) -> torch.Tensor:
    """``Wᵀ z + W z`` on the test rows: what each test image's neighbours say (W z) and what
    every node that counts it among its neighbours says (Wᵀ z); z holds test then support rows."""
    own = (value[:n_queries, :, None] * z[index[:n_queries]]).sum(1)
    incoming = torch.zeros(n_queries, z.shape[1], dtype=z.dtype)
    incoming.index_add_(0, index.reshape(-1), (value[:, :, None] * z[:, None, :]).reshape(-1, z.shape[1]))
    return incoming + own


def log_gaussian(x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """N x K: ``-0.5 Σ_d (x_d - μ_kd)² / σ²_d`` (upstream's ``Gaussian(no_exp=True)``; the shared
    covariance's normaliser is the same for every class and cancels)."""
    out = torch.empty(len(x), len(mu), dtype=x.dtype)
    for rows in row_blocks(len(x), len(mu) * x.shape[1]):
        out[rows] = -0.5 * torch.einsum("ikd,d->ik", (x[rows, None, :] - mu[None]) ** 2, 1 / var)
    return out


def weighted_spread(x: torch.Tensor, weights: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """d: ``Σ_i Σ_k w_ik (x_i - μ_k)²``, in row blocks."""
    total = torch.zeros(x.shape[1], dtype=x.dtype)
    for rows in row_blocks(len(x), len(mu) * x.shape[1]):
        total += torch.einsum("ik,ikd->d", weights[rows], (x[rows, None, :] - mu[None]) ** 2)
    return total


def init_mu_zero_shot(x: torch.Tensor, z: torch.Tensor, confident: int) -> torch.Tensor:
    """Each class's mean of ``z_ik f_i`` over its ``confident`` highest-z test images, normalised."""
    top = z.topk(min(confident, len(z)), dim=0).indices  # k x K
    mu = torch.stack([(x[top[:, c]] * z[top[:, c], c, None]).mean(0) for c in range(z.shape[1])])
    return F.normalize(mu, dim=-1)


def update_mu(x, z, support, support_z, gamma) -> torch.Tensor:
    num = z.T @ x / len(x)
    den = z.sum(0)[:, None] / len(x)
    if support is not None:
        weight = gamma * TEMPERATURE / len(support)
        num = num + weight * support_z.T @ support
        den = den + weight * support_z.sum(0)[:, None]
    return F.normalize(num / den, dim=-1)


def update_var(x, z, mu, support, support_z, gamma) -> torch.Tensor:
    var = weighted_spread(x, z, mu) / len(x)
    den = z.sum() / len(x)
    if support is not None and gamma > 0:
        weight = gamma * TEMPERATURE / len(support)
        var = var + weight * weighted_spread(support, support_z, mu)
        den = den + weight * support_z.sum()
    return var / den


def transclip(query, y_hat, p, support=None, support_labels=None, val=None, val_labels=None):
    """Assignments z (Q x K) of the test features ``query`` given the base's probabilities ``y_hat``;
    with labelled ``support`` images (few-shot), γ is chosen on ``val``. Returns (z, what was chosen)."""
    n_q, n_classes = y_hat.shape
    few_shot = support is not None and len(support) > 0
    lam = float(p["lambda_few_shot"] if few_shot else p["lambda_zero_shot"])
    support_z = F.one_hot(support_labels, n_classes).to(query.dtype) if few_shot else None
    nodes = torch.cat([query, support]) if few_shot else query
    index, value = knn_graph(nodes, query, int(p["neighbours"]))
    scale = TEMPERATURE / (2 * index.shape[1]) if index.shape[1] else 0.0
    prior = y_hat ** lam
    z = y_hat.clone()
    mu = F.normalize(support_z.T @ support, dim=-1) if few_shot else init_mu_zero_shot(query, z, int(p["confident"]))
    var = torch.full((query.shape[1],), 1.0 / query.shape[1], dtype=query.dtype)
    nearest = (val @ query.T).argmax(1) if few_shot and val is not None and len(val) else None

    def update_z(z):
        likelihood = log_gaussian(query, mu, var)
        for _ in range(int(p["z_steps"])):
            all_z = torch.cat([z, support_z]) if few_shot else z
            logits = likelihood + scale * propagate(all_z, index, value, n_q)
            logits = logits - logits.max(dim=1, keepdim=True).values
            z = prior * torch.exp(logits / TEMPERATURE)
            z = z / z.sum(dim=1, keepdim=True)
        return z

    best = None
    for gamma in (p["gammas"] if few_shot else [0.0]):
        for iteration in range(int(p["iterations"]) + 1):
            z = update_z(z)
            if iteration == int(p["iterations"]):
                break
            mu = update_mu(query, z, support if few_shot else None, support_z, gamma)
            var = update_var(query, z, mu, support if few_shot else None, support_z, gamma)
        val_acc = float((z[nearest].argmax(1) == val_labels).float().mean()) if nearest is not None else None
        # upstream: "if acc_val > best_val" -- ties keep the earlier gamma
        if best is None or (val_acc is not None and val_acc > best[2]):
            best = (z.clone(), float(gamma), val_acc)
    z, gamma, val_acc = best
    return z, {"gamma": gamma if few_shot else None, "val_accuracy": val_acc, "lambda": lam}


class TransCLIPHead(nn.Module):
    """The base method's head, then TransCLIP over the whole batch it is given (transductive).
    ``last`` holds what the last call chose (γ and its validation accuracy)."""

    def __init__(self, base: nn.Module, params: dict, support, support_labels, val, val_labels) -> None:
        super().__init__()
        self.base, self.params = base, params
        self.support, self.support_labels, self.val, self.val_labels = support, support_labels, val, val_labels
        self.last: dict = {}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y_hat = torch.softmax(self.base(features).float(), dim=1)
        z, self.last = transclip(F.normalize(features.float(), dim=-1), y_hat, self.params, self.support, self.support_labels,
                                 self.val, self.val_labels)
        return torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))


def validation_shots(labels: np.ndarray, support_labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Positions of the validation images TransCLIP may look at: per class, ``min(per_class, the
    class's support images)`` drawn without replacement (seeded), as upstream's ``min(shots, 4)``."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        take = min(per_class, int((support_labels == c).sum()), len(where))
        picked.append(np.sort(rng.choice(where, size=take, replace=False)))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def refine(base_state: dict, data, params: dict, seed: int):
    """The stage's state: the base head's state, the support images (none for a base without
    training data) and the validation images γ is chosen on. The work happens in the head."""
    p = {**SPEC["defaults"], **params}
    # the class count and feature width from what every backbone gives (a vision-only one has no class text)
    n_classes, dim = data.class_count(), np.asarray(data.val_features).shape[1]
    support_labels = np.asarray(data.train_labels)
    state = {"base": base_state, "params": {k: v for k, v in p.items() if k != "methods"}}
    if len(support_labels):
        picked = validation_shots(np.asarray(data.val_labels), support_labels, int(p["val_per_class"]), seed)
        state.update(
            support=F.normalize(tensor(data.train_features), dim=-1), support_labels=labels_tensor(support_labels),
            val=F.normalize(tensor(np.asarray(data.val_features)[picked]), dim=-1), val_labels=labels_tensor(np.asarray(data.val_labels)[picked]),
        )
    # what it fits to each test set: the class means and the shared diagonal variance
    return state, {"trainable_parameters": int(n_classes * dim + dim), "validation_images": int(len(state.get("val_labels", [])))}


def build_head(s: dict) -> nn.Module:
    return TransCLIPHead(build_base_head(s["base"]), s["params"], s.get("support"), s.get("support_labels"), s.get("val"),
                         s.get("val_labels"))
