"""Tip-Adapter, training-free (Zhang et al., 2022; ``gaopengcuhk/Tip-Adapter``, ``main.py``
and ``utils.py``).

A cache model: the keys are the training features, the values their one-hot labels. A test
feature ``f`` (unit length) is scored against the class prompts and against the cache::

    A       = exp(-beta * (1 - f @ K.T))           affinity to every cached feature
    logits  = 100 * f @ W.T + alpha * A @ L        W: class-prompt features, L: one-hot values

``beta`` (sharpness) and ``alpha`` (weight of the cache) are searched on the validation split
over Tip-Adapter's grid (``search_hp``): ``i * (scale - 0.1) / steps + 0.1`` for
``i in range(steps)``, beta the outer loop, alpha the inner, the first setting with the highest
validation accuracy kept. The defaults are the few-shot benchmark's histology settings
(``FereshteShakeri/few-shot-MedVLMs``, ``Histo-VLM/configs/base.yaml``: scale [50, 50], steps
[200, 200], initial beta 1 and alpha 1); Tip-Adapter's own configs use smaller grids, e.g.
[7, 3] and [200, 20] on ImageNet. ``text_scale`` is the 100 of the public code (CLIP's
``exp(logit_scale)``), not the backbone's own scale, so the searched alphas mean the same.

Departure: upstream's cache keys average each training image's features over ten random
crops; here the keys are the cached features of the images as encoded once (no augmentation).

The head keeps every training feature (N x d floats) and scores test images in blocks; the
search costs ``steps_beta x N_val x N_train`` exponentials, meant for few-shot caches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods._features import BLOCK_ELEMENTS, labels_tensor, row_blocks, tensor

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "Tip-Adapter",
    "order": 40,
    "defaults": {
        "init_beta": 1.0,
        "init_alpha": 1.0,
        "search": True,
        "search_scale": [50.0, 50.0],
        "search_step": [200, 200],
        "text_scale": 100.0,
    },
    "params": {
        "init_beta": {"type": "number", "minimum": 0, "description": "beta kept when there is no search or no validation split"},
        "init_alpha": {"type": "number", "minimum": 0, "description": "alpha kept when there is no search or no validation split"},
        "search": {"type": "boolean", "description": "search beta and alpha on the validation split"},
        "search_scale": {
            "type": "array", "items": {"type": "number", "minimum": 0.1}, "minItems": 2, "maxItems": 2,
            "description": "largest [beta, alpha] of the grid",
        },
        "search_step": {
            "type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2,
            "description": "number of [beta, alpha] values of the grid",
        },
        "text_scale": {"type": "number", "exclusiveMinimum": 0, "description": "scale of the class-prompt logits (upstream: 100)"},
    },
}


def grid(scale: float, steps: int) -> list[float]:
    """Tip-Adapter's search values: ``steps`` values from 0.1 up to (not including) ``scale``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-beta (1 - affinity)) @ values``: each cached feature votes for its class, weighted
    by its similarity to the test feature."""
    return torch.exp(-beta * (1 - affinity)) @ values


class TipAdapterHead(nn.Module):
    """``text_scale * f @ W.T + alpha * exp(-beta (1 - f @ K.T)) @ L``, f normalised; the keys
    K are used as stored (Tip-Adapter-F's trained keys are no longer unit vectors)."""

    def __init__(self, keys, labels, n_classes: int, class_text, beta: float, alpha: float, text_scale: float) -> None:
        super().__init__()
        self.register_buffer("keys", keys)
        self.register_buffer("values", F.one_hot(labels, n_classes).float())
        self.register_buffer("class_text", class_text)
        self.beta, self.alpha, self.text_scale = float(beta), float(alpha), float(text_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        logits = self.text_scale * f @ self.class_text.T
        for rows in row_blocks(len(f), len(self.keys)):
            logits[rows] += self.alpha * cache_logits(f[rows] @ self.keys.T, self.values, self.beta)
        return logits


def search_beta_alpha(
    affinity: Callable[[torch.Tensor], torch.Tensor],
    values: torch.Tensor,
    text_logits: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    params: dict[str, Any],
) -> tuple[float, float, float | None]:
    """``(beta, alpha, validation accuracy)`` of the grid's best setting (the first of equals,
    beta-major as upstream's nested loops); the initial values when there is nothing to search.

    ``affinity(rows)`` gives the affinities of validation features to the cache, ``text_logits``
    the validation images' scaled class-prompt logits. Every beta needs one exponential of the
    affinities; every alpha of it only a sum, so all alphas are scored together.
    """
    if not params["search"] or len(val_y) == 0:
        return float(params["init_beta"]), float(params["init_alpha"]), None
    betas = grid(params["search_scale"][0], params["search_step"][0])
    alpha_values = grid(params["search_scale"][1], params["search_step"][1])
    alphas = torch.tensor(alpha_values)
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.int64)
    n_cache, n_classes = values.shape
    # a block holds the affinities and, per beta, the logits of every alpha
    for rows in row_blocks(len(val_x), max(n_cache, len(alphas) * n_classes), BLOCK_ELEMENTS):
        block_affinity = affinity(val_x[rows])
        for b, beta in enumerate(betas):
            cached = cache_logits(block_affinity, values, beta)
            logits = text_logits[rows][None] + alphas[:, None, None] * cached[None]
            correct[b] += (logits.argmax(-1) == val_y[rows][None]).sum(-1)
    best = int(correct.flatten().argmax())  # first maximum in beta-major order
    b, a = divmod(best, len(alphas))
    return float(betas[b]), float(alpha_values[a]), float(correct[b, a]) / len(val_y)


def fit(data, params, seed):
    p = {**SPEC["defaults"], **params}
    keys = F.normalize(tensor(data.train_features), dim=-1)
    labels = labels_tensor(data.train_labels)
    class_text = tensor(data.class_text)
    n_classes = len(class_text)
    val_x, val_y = F.normalize(tensor(data.val_features), dim=-1), labels_tensor(data.val_labels)
    values = F.one_hot(labels, n_classes).float()
    beta, alpha, val_acc = search_beta_alpha(
        lambda x: x @ keys.T, values, p["text_scale"] * val_x @ class_text.T, val_x, val_y, p
    )
    state = {
        "keys": keys, "labels": labels, "n_classes": n_classes, "class_text": class_text,
        "beta": beta, "alpha": alpha, "text_scale": float(p["text_scale"]),
    }
    info = {"beta": beta, "alpha": alpha, "val_accuracy": val_acc, "cache_size": len(keys), "trainable_parameters": 0}
    return state, info


def build_head(s: dict) -> nn.Module:
    return TipAdapterHead(s["keys"], s["labels"], s["n_classes"], s["class_text"], s["beta"], s["alpha"], s["text_scale"])
