"""CLIP-Adapter (Gao et al., 2021; ``gaopengcuhk/CLIP-Adapter``, ``clip_adapter.py``), image side.

A bottleneck on the frozen image feature, mixed with it by the residual ratio, then compared
with the frozen class-prompt features::

    a       = relu(W2 relu(W1 f))              W1: d -> d/4, W2: d/4 -> d, no biases
    f'      = ratio * a + (1 - ratio) * f      ratio 0.2
    logits  = exp(logit_scale) * normalize(f') @ t.T

The ReLU after the second layer is the public code's (its ``Adapter`` ends in a ReLU). Unlike
RFC, the two terms are mixed before any normalisation, as upstream mixes the raw features. The
adapter has no bias and ReLU is positively homogeneous, so ``f'(c f) = c f'(f)`` for c > 0 and
the normalised result is the same for the raw feature and the cached normalised one: training on
the cache is exactly training on the raw features.

Training is cross-entropy with the optimiser of the public code, which runs in CoOp's Dassl
code base ("follow CoOp's command"): SGD, lr 0.002, momentum 0.9, weight decay 5e-4, batch 32,
200 epochs of a cosine schedule after one warm-up epoch at a constant 1e-5
(:func:`medtune.methods.coop.lr_at`), the last incomplete batch dropped when there are at least
``batch_size`` samples. Upstream keeps the last epoch; here, as the few-shot benchmark
(``FereshteShakeri/few-shot-MedVLMs``) and this package's CoOp do, the epoch with the best
validation accuracy is kept (ties: lower validation loss, then the earlier epoch).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods.coop import lr_at
from medtune.training import FunctionalSGD, check_finite, history_record, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "CLIP-Adapter",
    "order": 35,
    "defaults": {
        "reduction": 4,
        "ratio": 0.2,
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 200,
        "batch_size": 32,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
    },
    "params": {
        "reduction": {"type": "integer", "minimum": 1, "description": "bottleneck width is d // reduction (4)"},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1, "description": "residual ratio: share of the adapted feature (0.2)"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 10, "description": "SGD learning rate after the warm-up, cosine-decayed"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "SGD weight decay"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "passes over the training subset; the best validation epoch is kept"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "training features per step"},
        "warmup_epochs": {"type": "integer", "minimum": 0, "description": "epochs at the constant warmup_lr before the cosine schedule"},
        "warmup_lr": {"type": "number", "minimum": 0, "description": "learning rate during the warm-up"},
    },
}


def adapter(dim: int, reduction: int) -> nn.Sequential:
    hidden = max(1, dim // int(reduction))
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.ReLU(),
        nn.Linear(hidden, dim, bias=False),
        nn.ReLU(),
    )


class CLIPAdapterHead(nn.Module):
    def __init__(self, dim: int, reduction: int, ratio: float, class_text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.adapter = adapter(dim, reduction)
        self.ratio = float(ratio)
        self.register_buffer("class_text", class_text)
        self.logit_scale = float(logit_scale)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        mixed = self.ratio * self.adapter(features) + (1 - self.ratio) * features
        return F.normalize(mixed, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(features) @ self.class_text.T


def fit(data, params, seed):
    p = {**SPEC["defaults"], **params}
    gen = seed_everything(seed)
    x = torch.tensor(np.asarray(data.train_features), dtype=torch.float32)
    y = torch.tensor(np.asarray(data.train_labels), dtype=torch.int64)
    val_x = torch.tensor(np.asarray(data.val_features), dtype=torch.float32)
    val_y = torch.tensor(np.asarray(data.val_labels), dtype=torch.int64)
    class_text = torch.as_tensor(np.asarray(data.class_text)).float()
    head = CLIPAdapterHead(x.shape[1], p["reduction"], p["ratio"], class_text, data.logit_scale)
    # torch.optim.SGD's update without its class, which imports torch._dynamo (seconds)
    optimizer = FunctionalSGD(head.adapter.parameters(), lr=lr_at(0, p), momentum=p["momentum"], weight_decay=p["weight_decay"])
    batch = int(p["batch_size"])
    stop = len(x) - len(x) % batch if len(x) >= batch else len(x)  # Dassl's drop_last
    history = {"train_loss": [], "val_accuracy": [], "val_loss": []}
    best, step = None, 0
    for epoch in range(int(p["epochs"])):
        lr = optimizer.lr = lr_at(epoch, p)
        head.train()
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for start in range(0, stop, batch):
            sel = order[start : start + batch]
            loss = F.cross_entropy(head(x[sel]), y[sel])
            check_finite(loss, step, lr)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        head.eval()
        val_acc = val_loss = None
        if len(val_y):
            with torch.no_grad():
                logits = head(val_x)
            val_acc, val_loss = float((logits.argmax(1) == val_y).float().mean()), float(F.cross_entropy(logits, val_y))
        history["train_loss"].append(float(np.mean(losses)) if losses else None)
        history["val_accuracy"].append(val_acc)
        history["val_loss"].append(val_loss)
        # best validation accuracy, then lower validation loss, then the earlier epoch;
        # without a validation split, the last epoch
        key = (val_acc, -val_loss) if val_acc is not None else (epoch,)
        if best is None or key > best[0]:
            best = (key, epoch, {k: v.detach().clone() for k, v in head.adapter.state_dict().items()})
    _, best_epoch, weights = best
    state = {
        "reduction": int(p["reduction"]),
        "ratio": float(p["ratio"]),
        "adapter": weights,
        "class_text": class_text,
        "logit_scale": float(data.logit_scale),
    }
    info = {
        "trainable_parameters": int(sum(v.numel() for v in weights.values())),
        "best_epoch": best_epoch + 1,  # 1-based
        "val_accuracy": history["val_accuracy"][best_epoch],
        **history_record(history, step),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    head = CLIPAdapterHead(s["class_text"].shape[1], s["reduction"], s["ratio"], s["class_text"], s["logit_scale"])
    head.adapter.load_state_dict(s["adapter"])
    return head
