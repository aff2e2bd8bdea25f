"""Model soups (Wortsman et al., ICML 2022; ``mlfoundations/model-soups``): the weights of several
models fine-tuned from the same pretrained weights, averaged into one model, evaluated like any.

* **uniform** soup: the mean of every ingredient's weights;
* **greedy** soup (the paper's Recipe 1): the ingredients sorted by validation accuracy, best
  first; each joins the soup if the soup with it is at least as accurate on validation as
  without it (``>=``), else it is left out. The public code (``main.py``, "if
  held_out_val_accuracy > best_val_acc_so_far") asks for a strict rise: ``join_if: better``.

Ingredients. The paper's ingredients share the pretrained initialisation and differ in
hyperparameters (learning rate, epochs, augmentation, label smoothing) and seed. Here a soup of
one run is made from the runs of the methods its ``methods`` names **on the same dataset, backbone,
seed and training subset**: variants of one backbone-training method (e.g. ``finetune_label``
and ``finetune_caption``, or fine-tunings at other learning rates), which share the weights'
shape and the head they are evaluated with. Souping across seeds instead would mix models that
saw different training subsets (each seed draws its own) and leave one soup per fraction, with
no seeds to pair it with the other methods in the significance table; souping across variants
keeps the seed as the unit of replication, like every other method.

The cost a soup's ``train.json`` records is its ingredients' training plus its own (encoding
the validation split for each ingredient and each greedy candidate, and the test split).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

SPEC = {
    "training": "soup",
    "requires": ["open_clip_towers"],  # it trains and saves an open_clip model's own state dict
    "label": "model soup",
    "order": 80,
    "defaults": {"methods": ["finetune_label", "finetune_caption"], "recipe": "greedy", "join_if": "not_worse"},
    "params": {
        "methods": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "uniqueItems": True,
            "description": "its ingredients: variants of one backbone-training method run by the same study on the same subsets",
        },
        "recipe": {"enum": ["greedy", "uniform"], "description": "greedy: add by validation accuracy while it does not drop; uniform: average all"},
        "join_if": {
            "enum": ["not_worse", "better"],
            "description": "greedy: an ingredient joins if the soup's validation accuracy does not drop (the paper's Recipe 1) or "
            "only if it rises (the public code's main.py)",
        },
    },
}


def average(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor over ``states`` (the first state's value for the
    others, e.g. integer buffers); every state must have the same keys."""
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            raise ValueError(f"ingredient {i} has other weights than ingredient 0 ({sorted(set(state) ^ keys)[:3]}); a soup needs one architecture")
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].to(torch.float64) for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy(states: Sequence[dict[str, torch.Tensor]], accuracy: Callable[[dict[str, torch.Tensor]], float],
           ingredient_accuracy: Sequence[float], join_if: str = "not_worse") -> tuple[list[int], float, list[dict]]:
    """Recipe 1: ``(ingredients kept (indices), the soup's validation accuracy, every step)``.
    ``ingredient_accuracy[i]`` is ingredient i's own validation accuracy; ties in the order keep
    the ingredients' given order. ``join_if``: ``not_worse`` (>=, the paper) or ``better`` (>)."""
    order = sorted(range(len(states)), key=lambda i: -ingredient_accuracy[i])
    kept, best = [order[0]], ingredient_accuracy[order[0]]
    steps = [{"ingredient": order[0], "accuracy": best, "joined": True}]
    for i in order[1:]:
        candidate = accuracy(average([states[j] for j in kept + [i]]))
        joined = candidate >= best if join_if == "not_worse" else candidate > best
        steps.append({"ingredient": i, "accuracy": candidate, "joined": joined})
        if joined:
            kept, best = kept + [i], candidate
    return kept, best, steps
