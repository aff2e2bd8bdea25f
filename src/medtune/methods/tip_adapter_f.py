"""Tip-Adapter-F: Tip-Adapter with its cache keys fine-tuned (``gaopengcuhk/Tip-Adapter``,
``run_tip_adapter_F``; the few-shot benchmark ``FereshteShakeri/few-shot-MedVLMs``).

The keys ``K`` (N x d, initialised to the training features) become parameters; values, class
prompts and the backbone stay fixed. Training is cross-entropy of Tip-Adapter's logits at the
initial ``beta`` and ``alpha`` (:mod:`medtune.methods.tip_adapter`), AdamW (lr 0.001, eps 1e-4,
torch's default weight decay 0.01) under a cosine schedule stepped every batch over all
``epochs x batches`` steps, batch 256, 20 epochs: the benchmark's settings (``base.yaml``:
"lr 0.001 for Tip Adapter", "tip adapter: 20" epochs, "256 tip adapter"). After every epoch
the keys are scored on the validation split and the best epoch is kept (upstream scores on the
test split; the benchmark on validation, as here); then beta and alpha are searched on the
validation split with the trained keys, as upstream's ``search_hp(..., adapter=adapter)``.

Departure: upstream trains on randomly cropped images; here on the cached features of the
images as encoded once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods._features import labels_tensor, row_blocks, tensor
from medtune.methods.tip_adapter import TipAdapterHead, cache_logits, search_beta_alpha
from medtune.training import FunctionalAdam, check_finite, cosine_lrs, history_record, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "Tip-Adapter-F",
    "order": 41,
    "defaults": {
        "init_beta": 1.0,
        "init_alpha": 1.0,
        "search": True,
        "search_scale": [50.0, 50.0],
        "search_step": [200, 200],
        "text_scale": 100.0,
        "lr": 0.001,
        "eps": 1e-4,
        "weight_decay": 0.01,
        "epochs": 20,
        "batch_size": 256,
    },
    "params": {
        "init_beta": {"type": "number", "minimum": 0, "description": "beta while the keys train"},
        "init_alpha": {"type": "number", "minimum": 0, "description": "alpha while the keys train"},
        "search": {"type": "boolean", "description": "search beta and alpha on the validation split after training"},
        "search_scale": {"type": "array", "items": {"type": "number", "minimum": 0.1}, "minItems": 2, "maxItems": 2, "description": "largest [beta, alpha] of the grid searched after training"},
        "search_step": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2, "description": "number of [beta, alpha] values of the grid"},
        "text_scale": {"type": "number", "exclusiveMinimum": 0, "description": "scale of the class-prompt logits (upstream: 100)"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "AdamW learning rate of the keys, cosine per step"},
        "eps": {"type": "number", "exclusiveMinimum": 0, "description": "AdamW epsilon"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "AdamW weight decay (decoupled)"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "passes over the training subset; the best validation epoch is kept"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "training features per step"},
    },
}


def _val_accuracy(keys, values, text_logits, val_x, val_y, beta, alpha) -> float | None:
    if len(val_y) == 0:
        return None
    correct = 0
    for rows in row_blocks(len(val_x), len(keys)):
        logits = text_logits[rows] + alpha * cache_logits(val_x[rows] @ keys.T, values, beta)
        correct += int((logits.argmax(1) == val_y[rows]).sum())
    return correct / len(val_y)


def fit(data, params, seed):
    p = {**SPEC["defaults"], **params}
    gen = seed_everything(seed)
    x = F.normalize(tensor(data.train_features), dim=-1)
    y = labels_tensor(data.train_labels)
    class_text = tensor(data.class_text)
    n_classes = len(class_text)
    values = F.one_hot(y, n_classes).float()
    val_x, val_y = F.normalize(tensor(data.val_features), dim=-1), labels_tensor(data.val_labels)
    train_text = p["text_scale"] * x @ class_text.T
    val_text = p["text_scale"] * val_x @ class_text.T
    beta, alpha = float(p["init_beta"]), float(p["init_alpha"])

    keys = nn.Parameter(x.clone())
    # torch.optim.AdamW stepped by CosineAnnealingLR(T_max = every step), without the optimizer
    # class, which imports torch._dynamo (seconds): the same updates and learning rates
    optimizer = FunctionalAdam([keys], lr=p["lr"], eps=p["eps"], weight_decay=p["weight_decay"], decoupled=True)
    batch = int(p["batch_size"])
    batches = math.ceil(len(x) / batch)
    lrs = cosine_lrs(p["lr"], int(p["epochs"]) * batches, int(p["epochs"]) * batches)
    history = {"train_loss": [], "val_accuracy": []}
    best, step = None, 0
    for epoch in range(int(p["epochs"])):
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for start in range(0, len(x), batch):
            sel = order[start : start + batch]
            logits = train_text[sel] + alpha * cache_logits(x[sel] @ keys.T, values, beta)
            loss = F.cross_entropy(logits, y[sel])
            optimizer.lr = lrs[step]
            check_finite(loss, step, optimizer.lr)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        with torch.no_grad():
            val_acc = _val_accuracy(keys.detach(), values, val_text, val_x, val_y, beta, alpha)
        history["train_loss"].append(sum(losses) / len(losses))
        history["val_accuracy"].append(val_acc)
        # the first epoch of the best validation accuracy; without a validation split, the last
        key = val_acc if val_acc is not None else epoch
        if best is None or key > best[0]:
            best = (key, epoch, keys.detach().clone())
    _, best_epoch, trained = best

    beta, alpha, search_acc = search_beta_alpha(lambda v: v @ trained.T, values, val_text, val_x, val_y, p)
    state = {
        "keys": trained, "labels": y, "n_classes": n_classes, "class_text": class_text,
        "beta": beta, "alpha": alpha, "text_scale": float(p["text_scale"]),
    }
    info = {
        "beta": beta,
        "alpha": alpha,
        "val_accuracy": search_acc if search_acc is not None else history["val_accuracy"][best_epoch],
        "best_epoch": best_epoch + 1,  # 1-based
        "cache_size": len(trained),
        "trainable_parameters": int(trained.numel()),
        **history_record(history, step),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    return TipAdapterHead(s["keys"], s["labels"], s["n_classes"], s["class_text"], s["beta"], s["alpha"], s["text_scale"])
