"""CLIPath's Residual Feature Connection (RFC).

A bias-free bottleneck MLP on the frozen image feature, mixed back with the
original feature by the residual ratio alpha::

    f' = alpha * normalize(mlp(f)) + (1 - alpha) * normalize(f)
    logits = exp(logit_scale) * normalize(f') @ t.T

with t the frozen class-prompt text features; cross-entropy over classes,
Adam. Because the MLP has no bias and ReLU is positively homogeneous,
normalize(mlp(c f)) == normalize(mlp(f)) for c > 0, so training on the cached
*normalised* features is exactly training on the raw ones. One adapter is
trained per alpha and the alpha with the best validation accuracy is kept (the
public code never used its validation split).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.training import check_finite, seed_everything

SPEC = {
    "training": "frozen",
    "label": "CLIP + RFC",
    "order": 30,
    "defaults": {
        "alphas": [0.2, 0.4, 0.6, 0.8, 1.0],
        "lr": 1e-4,
        "weight_decay": 5e-3,
        "epochs": 5,
        "batch_size": 32,
        "hidden_divisors": [4, 16, 4],
    },
    "params": {
        "alphas": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 1},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "weight_decay": {"type": "number", "minimum": 0},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 10000},
        "batch_size": {"type": "integer", "minimum": 1},
        "hidden_divisors": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
    },
}


def bottleneck(dim: int, hidden_divisors) -> nn.Sequential:
    """dim -> dim/4 -> dim/16 -> dim/4 -> dim for divisors (4, 16, 4): 1024-256-64-256-1024 on RN50."""
    sizes = [dim] + [max(1, dim // d) for d in hidden_divisors] + [dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualFeatureConnection(nn.Module):
    def __init__(self, dim: int, hidden_divisors, alpha: float) -> None:
        super().__init__()
        self.mlp = bottleneck(dim, hidden_divisors)
        self.alpha = float(alpha)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mixed = self.alpha * F.normalize(self.mlp(features), dim=-1) + (1 - self.alpha) * F.normalize(features, dim=-1)
        # a mix of two unit vectors needs renormalising; at alpha 0 or 1 it is unit already,
        # and skipping keeps alpha = 0 bit-identical to zero-shot CLIP
        return mixed if self.alpha in (0.0, 1.0) else F.normalize(mixed, dim=-1)


class RFCHead(nn.Module):
    def __init__(self, rfc: ResidualFeatureConnection, class_text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.rfc = rfc
        self.register_buffer("class_text", class_text)
        self.logit_scale = float(logit_scale)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.rfc(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(features) @ self.class_text.T


def train_alphas(data, params: dict, seed: int) -> list[tuple[RFCHead, list[float]]]:
    """One adapter per alpha in ``params["alphas"]``, trained side by side.

    Every alpha starts from the same seeded weights and sees the same batches, so
    the adapters are stacked along a leading alpha axis and trained in one loop:
    the summed loss gives each adapter exactly its own gradient and Adam is
    elementwise, so this is the per-alpha training with one Python step for all
    alphas instead of one each.
    """
    gen = seed_everything(seed)
    alphas = [float(a) for a in params["alphas"]]
    dim = data.train_features.shape[1]
    init = bottleneck(dim, params["hidden_divisors"])
    # n_alphas x out x in per layer
    weights = [
        nn.Parameter(layer.weight.detach().expand(len(alphas), -1, -1).clone())
        for layer in init
        if isinstance(layer, nn.Linear)
    ]
    alpha = torch.tensor(alphas)[:, None, None]
    renormalise = torch.tensor([a not in (0.0, 1.0) for a in alphas])[:, None, None]
    class_text = torch.as_tensor(data.class_text).float()
    x = torch.tensor(np.asarray(data.train_features), dtype=torch.float32)
    y = torch.tensor(np.asarray(data.train_labels), dtype=torch.int64)
    optimizer = torch.optim.Adam(weights, lr=params["lr"], weight_decay=params["weight_decay"])
    losses, step = [], 0
    for _ in range(params["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), params["batch_size"]):
            sel = order[start : start + params["batch_size"]]
            features = x[sel]
            hidden = features.expand(len(alphas), -1, -1)
            for i, w in enumerate(weights):
                hidden = hidden @ w.transpose(1, 2)
                if i < len(weights) - 1:
                    hidden = F.relu(hidden)
            # as ResidualFeatureConnection.forward, for every alpha at once
            mixed = alpha * F.normalize(hidden, dim=-1) + (1 - alpha) * F.normalize(features, dim=-1)
            mixed = torch.where(renormalise, F.normalize(mixed, dim=-1), mixed)
            logits = data.logit_scale * mixed @ class_text.T  # n_alphas x batch x classes
            per_alpha = F.cross_entropy(logits.transpose(1, 2), y[sel].expand(len(alphas), -1), reduction="none").mean(1)
            loss = per_alpha.sum()
            check_finite(loss, step, params["lr"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(per_alpha.detach())
            step += 1
    history = torch.stack(losses).T.tolist() if losses else [[] for _ in alphas]
    heads = []
    for a, (value, trained) in enumerate(zip(alphas, history)):
        head = RFCHead(ResidualFeatureConnection(dim, params["hidden_divisors"], value), class_text, data.logit_scale)
        linears = [layer for layer in head.rfc.mlp if isinstance(layer, nn.Linear)]
        with torch.no_grad():
            for layer, w in zip(linears, weights):
                layer.weight.copy_(w[a])
        heads.append((head.eval(), trained))
    return heads


def fit(data, params, seed):
    from medtune.heads import accuracy

    best, val_acc = None, {}
    for alpha, (head, losses) in zip(params["alphas"], train_alphas(data, params, seed)):
        val_acc[alpha] = accuracy(head, data.val_features, data.val_labels)
        if best is None or val_acc[alpha] > val_acc[best[0]]:
            best = (alpha, head, losses)
    alpha, head, losses = best
    state = {
        "alpha": alpha,
        "hidden_divisors": list(params["hidden_divisors"]),
        "mlp": {k: v.detach().clone() for k, v in head.rfc.mlp.state_dict().items()},
        "class_text": head.class_text.clone(),
        "logit_scale": head.logit_scale,
    }
    info = {
        "alpha": alpha,
        "val_accuracy_by_alpha": {str(k): v for k, v in val_acc.items()},
        "final_train_loss": losses[-1] if losses else None,
        "steps": len(losses),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    dim = s["class_text"].shape[1]
    rfc = ResidualFeatureConnection(dim, s["hidden_divisors"], s["alpha"])
    rfc.mlp.load_state_dict(s["mlp"])
    return RFCHead(rfc, s["class_text"], s["logit_scale"])
