"""CLIPath's Residual Feature Connection (RFC), as ucdrubinet/CLIP_RFC computes it.

A bias-free bottleneck MLP on the frozen image feature f, with a ReLU after every
layer (the last included), mixed with the original feature by the residual ratio
alpha, the mix *not* renormalised (``Pcam/src/model/CustomCLIP.py``)::

    mlp    = Linear(d, d/4) ReLU Linear(d/4, 64) ReLU Linear(64, d/4) ReLU Linear(d/4, d) ReLU
    mixed  = alpha * normalize(mlp(f)) + (1 - alpha) * normalize(f)
    logits = exp(logit_scale) * mixed @ normalize(t).T

with t the frozen class-prompt text features (cached already normalised);
cross-entropy over classes, Adam. The hidden widths are configurable
(``hidden_widths``: an int is a width, ``"d/N"`` is the feature width divided by
N) and so is the last ReLU (``final_relu``); the defaults are upstream's.

Training on the cached *normalised* features is exactly training on the raw
ones: every layer is linear without bias and ReLU is positively homogeneous
(relu(c x) = c relu(x) for c > 0), so mlp(c f) = c mlp(f) and
normalize(mlp(c f)) = normalize(mlp(f)); the other term uses normalize(f)
already. The logits, hence the loss and the gradients, are unchanged by the
scale of f. (An MLP output that the last ReLU zeroes entirely has no direction:
upstream divides 0 by 0 and gets NaN, ``F.normalize`` keeps it 0, so that term
drops out of the mix.)

Unlike the public code we encode once (the frozen backbone is never re-run),
train one adapter per alpha side by side, and keep the alpha with the best
validation accuracy (the public code never used its validation split).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.training import FunctionalAdam, check_finite, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "CLIP + RFC",
    "order": 30,
    "defaults": {
        "alphas": [0.2, 0.4, 0.6, 0.8, 1.0],
        "lr": 1e-4,
        "weight_decay": 5e-3,
        "epochs": 5,
        "batch_size": 32,
        "hidden_widths": ["d/4", 64, "d/4"],  # CLIP_RFC's CustomCLIP.fc; "d/N": feature width / N
        "final_relu": True,
    },
    "params": {
        "alphas": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 1, "description": "the residual ratios α tried, one adapter each, trained side by side; the best on validation is kept"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "Adam learning rate"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "Adam weight decay (L2, as torch.optim.Adam)"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "passes over the training subset"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "training features per step"},
        "hidden_widths": {
            "description": "adapter hidden layer widths: an integer, or 'd/N' for the feature width divided by N (CLIP_RFC: [d/4, 64, d/4])",
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^d/[1-9][0-9]*$"}]},
        },
        "final_relu": {"type": "boolean", "description": "ReLU after the adapter's last layer too (CLIP_RFC: true)"},
    },
}

UPSTREAM_WIDTHS = ("d/4", 64, "d/4")  # CustomCLIP.fc: in_features // reduction (4), 64, in_features // 4
_DIVIDED = re.compile(r"^d/([1-9][0-9]*)$")


def resolve_widths(dim: int, hidden_widths) -> list[int]:
    """Hidden widths as ints: ``["d/4", 64, "d/4"]`` is [256, 64, 256] on RN50's 1024-d feature."""
    widths = []
    for width in hidden_widths:
        if isinstance(width, str):
            match = _DIVIDED.match(width)
            if not match:
                raise ValueError(f"rfc hidden width {width!r}: give an integer or 'd/N' (feature width divided by N)")
            widths.append(max(1, dim // int(match.group(1))))
        elif isinstance(width, (int, np.integer)) and not isinstance(width, bool) and width >= 1:
            widths.append(int(width))
        else:
            raise ValueError(f"rfc hidden width {width!r}: give an integer >= 1 or 'd/N'")
    return widths


def bottleneck(dim: int, hidden_widths, final_relu: bool = True) -> nn.Sequential:
    """dim -> widths... -> dim, no bias, ReLU after every layer (after the last one too if ``final_relu``)."""
    sizes = [dim] + resolve_widths(dim, hidden_widths) + [dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if final_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mix(adapted: torch.Tensor, features: torch.Tensor, alpha) -> torch.Tensor:
    """alpha * normalize(mlp(f)) + (1 - alpha) * normalize(f), not renormalised (as upstream).

    At alpha 0 this is normalize(f) exactly (0 * x adds nothing), so the head's logits
    are bit-identical to zero-shot CLIP's.
    """
    return alpha * F.normalize(adapted, dim=-1) + (1 - alpha) * F.normalize(features, dim=-1)


class ResidualFeatureConnection(nn.Module):
    def __init__(self, dim: int, hidden_widths, alpha: float, final_relu: bool = True) -> None:
        super().__init__()
        self.mlp = bottleneck(dim, hidden_widths, final_relu)
        self.alpha = float(alpha)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return mix(self.mlp(features), features, self.alpha)


class RFCHead(nn.Module):
    def __init__(self, rfc: ResidualFeatureConnection, class_text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.rfc = rfc
        self.register_buffer("class_text", class_text)
        self.logit_scale = float(logit_scale)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The mixed feature the logits use, *not* renormalised (its norm is at most 1, below 1
        wherever the two terms point apart). Retrieval ranks by cosine similarity, which
        normalises it anyway."""
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
    widths, final_relu = resolve_widths(dim, params["hidden_widths"]), bool(params["final_relu"])
    init = bottleneck(dim, widths, final_relu)
    # n_alphas x out x in per layer
    weights = [
        nn.Parameter(layer.weight.detach().expand(len(alphas), -1, -1).clone())
        for layer in init
        if isinstance(layer, nn.Linear)
    ]
    alpha = torch.tensor(alphas)[:, None, None]
    class_text = torch.as_tensor(data.class_text).float()
    x = torch.tensor(np.asarray(data.train_features), dtype=torch.float32)
    y = torch.tensor(np.asarray(data.train_labels), dtype=torch.int64)
    # torch.optim.Adam's update without its class, which imports torch._dynamo (seconds)
    optimizer = FunctionalAdam(weights, lr=params["lr"], weight_decay=params["weight_decay"])
    losses, step = [], 0
    for _ in range(params["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), params["batch_size"]):
            sel = order[start : start + params["batch_size"]]
            features = x[sel]
            hidden = features.expand(len(alphas), -1, -1)
            for i, w in enumerate(weights):
                hidden = hidden @ w.transpose(1, 2)
                if final_relu or i < len(weights) - 1:
                    hidden = F.relu(hidden)
            # as ResidualFeatureConnection.forward, for every alpha at once
            logits = data.logit_scale * mix(hidden, features, alpha) @ class_text.T  # n_alphas x batch x classes
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
        head = RFCHead(ResidualFeatureConnection(dim, widths, value, final_relu), class_text, data.logit_scale)
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
        "hidden_widths": resolve_widths(head.class_text.shape[1], params["hidden_widths"]),
        "final_relu": bool(params["final_relu"]),
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
    if "hidden_widths" not in s:
        raise ValueError("rfc head.pt predates the upstream RFC (it has 'hidden_divisors'); train it again")
    dim = s["class_text"].shape[1]
    rfc = ResidualFeatureConnection(dim, s["hidden_widths"], s["alpha"], s["final_relu"])
    rfc.mlp.load_state_dict(s["mlp"])
    return RFCHead(rfc, s["class_text"], s["logit_scale"])
