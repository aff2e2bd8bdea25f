"""CLAP (Silva-Rodríguez, Hajimiri, Ben Ayed & Dolz, CVPR 2024; ``jusiro/CLAP``,
``trainers/adapters.py`` and ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``): a linear probe
that starts at the zero-shot classifier (ZS-LP) and is held near it by a class-adaptive penalty::

    logits = exp(logit_scale) · normalize(f) · normalize(w_c)ᵀ            w_c starts at t_c
    loss   = CE(logits, y) + (1/K) Σ_c λ_c ‖w_c − t_c‖²

``λ_c`` is the mean zero-shot softmax probability of class c over the support images of class c
(``init_lagrangian_multipliers``: ``diag(softmax(logits_zs)ᵀ · onehot) / counts``), computed once
from the support set, so nothing is tuned on a validation split and the **last** epoch is kept
(``penalty: balanced`` is upstream's ``balanced`` variant, every λ = 1; ``none`` is plain ZS-LP).
The optimiser is upstream's Dassl one: SGD, lr 0.1, momentum 0.9, no weight decay, batch 256,
300 epochs of a cosine schedule after one warm-up epoch at a constant 1e-5 (stepped per epoch,
:func:`medtune.methods.coop.lr_at`); an epoch takes ``N // 256`` batches of a fresh shuffle
(one batch of all when N < 256), as upstream's ``run_epoch`` slices its shuffled features.

Departures: (1) upstream trains on 20 randomly cropped and flipped views of every support image
(``epochs_aumentation = 20``), computing λ over them; here the images as encoded once (clean).
(2) Upstream's prototypes ``t_c`` are the text tower's raw (unnormalised) outputs averaged over
the templates, and the penalty is measured at their scale; the cached class text here is
unit-norm. ``prototype_norm`` scales it: set it to the text tower's raw norm to train at
upstream's scale (the logits only see directions, so the scale only changes how hard the
penalty pulls and how far a step of lr 0.1 turns a prototype).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods import zeroshot
from medtune.methods._features import labels_tensor, tensor
from medtune.methods.coop import lr_at
from medtune.training import FunctionalSGD, check_finite, history_record, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "CLAP",
    "order": 11.25,
    "defaults": {
        "penalty": "adaptive",   # experiments/experiment_CLAP.txt: CONSTRAINT l2 (adaptive multipliers)
        "prototype_norm": 1.0,
        # configs/trainers/SGD_lr1e-1_B256_ep300.yaml
        "lr": 0.1,
        "momentum": 0.9,         # Dassl's default OPTIM.MOMENTUM
        "weight_decay": 0.0,
        "epochs": 300,
        "batch_size": 256,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
    },
    "params": {
        "penalty": {
            "enum": ["adaptive", "balanced", "none"],
            "description": "adaptive: lambda_c from the zero-shot accuracy on the support set (CLAP); balanced: every lambda 1; "
            "none: no penalty (ZS-LP)",
        },
        "prototype_norm": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "length of the class prototypes the probe starts at and is pulled to (upstream: the text tower's raw norm)",
        },
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "description": "SGD learning rate (upstream SGD_lr1e-1_B256_ep300.yaml: 0.1)"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum (Dassl's default: 0.9)"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "SGD weight decay (upstream: 0)"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 100000, "description": "training epochs; the last one is kept (upstream: 300)"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "images a batch (upstream: 256); fewer images than this: one batch of all"},
        "warmup_epochs": {"type": "integer", "minimum": 0, "description": "epochs at the constant warm-up rate before the cosine schedule (upstream: 1)"},
        "warmup_lr": {"type": "number", "minimum": 0, "description": "the warm-up learning rate (upstream WARMUP_CONS_LR: 1e-5)"},
    },
}


def lagrangian_multipliers(zero_shot_logits: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: str) -> torch.Tensor:
    """λ_c: the mean zero-shot probability of the true class over class c's support images
    (adaptive), or ones (balanced), or zeros (none). A class without support images gets 0."""
    if penalty == "balanced":
        return torch.ones(n_classes)
    if penalty == "none":
        return torch.zeros(n_classes)
    one_hot = F.one_hot(y, n_classes).float()
    hits = torch.diag(torch.softmax(zero_shot_logits, -1).T @ one_hot)
    return hits / one_hot.sum(0).clamp_min(1)


def fit(data, params, seed):
    p = {**SPEC["defaults"], **params}
    gen = seed_everything(seed)
    x, y = tensor(data.train_features), labels_tensor(data.train_labels)
    val_x, val_y = tensor(data.val_features), labels_tensor(data.val_labels)
    class_text = F.normalize(tensor(data.class_text), dim=-1)
    n_classes, scale = len(class_text), float(data.logit_scale)
    anchors = float(p["prototype_norm"]) * class_text
    multipliers = lagrangian_multipliers(scale * F.normalize(x, dim=-1) @ class_text.T, y, n_classes, p["penalty"])

    prototypes = nn.Parameter(anchors.clone())
    optimizer = FunctionalSGD([prototypes], lr=lr_at(0, p), momentum=p["momentum"], weight_decay=p["weight_decay"])
    batch = int(p["batch_size"])
    stop = len(x) - len(x) % batch if len(x) >= batch else len(x)  # Dassl's drop_last, as upstream's run_epoch
    history = {"train_loss": [], "val_accuracy": []}
    step = 0
    for epoch in range(int(p["epochs"])):
        lr = optimizer.lr = lr_at(epoch, p)
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for start in range(0, stop, batch):
            sel = order[start : start + batch]
            logits = scale * F.normalize(x[sel], dim=-1) @ F.normalize(prototypes, dim=-1).T
            loss = F.cross_entropy(logits, y[sel]) + torch.mean(multipliers * (prototypes - anchors).pow(2).sum(-1))
            check_finite(loss, step, lr)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        history["train_loss"].append(float(np.mean(losses)) if losses else None)
        history["val_accuracy"].append(None)
    kept = F.normalize(prototypes.detach(), dim=-1)
    val_acc = None
    if len(val_y):  # reported only: CLAP keeps the last epoch whatever the validation split says
        val_acc = float(((scale * F.normalize(val_x, dim=-1) @ kept.T).argmax(1) == val_y).float().mean())
        history["val_accuracy"][-1] = val_acc
    state = zeroshot.state(kept, scale)
    info = {
        "multipliers": multipliers.tolist(),
        "val_accuracy": val_acc,
        "distance_to_zero_shot": (prototypes.detach() - anchors).norm(dim=-1).tolist(),
        "trainable_parameters": int(prototypes.numel()),
        **history_record(history, step),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    """The zero-shot classifier's form, with the trained (normalised) prototypes as class text."""
    return zeroshot.build_head(s)
