"""LP++ (Huang, Shakeri, Dolz & Ben Ayed, CVPR 2024; ``FereshteShakeri/FewShot-CLIP-Strong-Baseline``,
``methods/linear_probe_p2.py``, and its histology study ``FereshteShakeri/few-shot-MedVLMs``,
``Histo-VLM/methods/linear_probe_p2.py``): a linear probe whose logits blend in the zero-shot
text logits with a learned per-class weight::

    logits = F Wᵀ + b + (F Tᵀ) ⊙ α        F: N x d image features, T: K x d class text, α ∈ R^K

Everything is the public code's, with no hyperparameter search:

* ``W`` starts at the class **sums** of the support features (``compute_centroids`` in
  ``methods/utils.py`` multiplies by the one-hot matrix; the division by the class counts is
  commented out), ``b`` as ``nn.Linear`` draws it (uniform in ±1/√d), seeded;
* ``α`` starts, for every class, at ``α₀ = 250 · mean_c(mean_{i ∈ c} f_i · t_c)``
  (``calculate_init_alpha``: the shots cancel out of ``250 / shots · shots · ...``);
* full-batch SGD with momentum 0.9 on ``W`` and ``b``, 300 epochs, step size
  ``lr_W = 4N / λ_max(FᵀF)`` (``calculate_lr_w``; ``w_step: shots`` is the histology
  study's default instead, ``lr_W = ln(k + 1) · 5`` with k = N / K);
* every 10th epoch ``α ← α − lr_α · ∇α`` with ``lr_α = N / (4 · max_c Σ_i (f_i · t_c)²)``
  (``calculate_lr_alpha``). The gradient is ``alpha_vec.grad``, which nothing zeroes
  (the optimiser owns only ``W`` and ``b``): it is the **sum** of every epoch's gradient so
  far, and so it is here;
* after every epoch the model is scored on the validation split; the last epoch with the
  highest validation accuracy so far (``>=``) is kept (the histology study scores balanced
  accuracy instead).

Departures: features are float32 (upstream runs CLIP in float16 on a GPU); a class absent from
the training subset is left out of the mean that gives ``α₀``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods._features import labels_tensor, tensor
from medtune.training import FunctionalSGD, check_finite, history_record, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower"],
    "label": "LP++",
    "order": 11,
    "defaults": {
        # FewShot-CLIP-Strong-Baseline configs/base.yaml: "train_epoch: 300 # ... linear-Probe: 300"
        "epochs": 300,
        "momentum": 0.9,
        "alpha_every": 10,     # linear_probe_p2.py: "if (epoch + 1) % 10 == 0"
        "alpha_init_scale": 250.0,  # calculate_init_alpha: "alpha_init = 250 / shots * alpha_tilde"
        "w_step": "data",      # calculate_lr_w (case 2 of the histology code); "shots": its case 1
        "w_step_scale": 5.0,   # Histo-VLM configs/base.yaml "lr_temp0: 5" (w_step: shots only)
    },
    "params": {
        "epochs": {"type": "integer", "minimum": 1, "maximum": 100000, "description": "full-batch SGD epochs (upstream configs/base.yaml: 300)"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum (upstream linear_probe_p2.py: 0.9)"},
        "alpha_every": {"type": "integer", "minimum": 1, "description": "epochs between the steps of alpha (10)"},
        "alpha_init_scale": {"type": "number", "exclusiveMinimum": 0, "description": "alpha0 = this x the mean class-wise text similarity (250)"},
        "w_step": {
            "enum": ["data", "shots"],
            "description": "step size of W and b: data = 4N / largest eigenvalue of F'F (LP++); shots = ln(k + 1) x w_step_scale, "
            "k = N / K (the histology study's default)",
        },
        "w_step_scale": {"type": "number", "exclusiveMinimum": 0, "description": "eta_0 of w_step: shots (5)"},
    },
}


class LPPlusPlusHead(nn.Module):
    """``F Wᵀ + b + α ⊙ (F Tᵀ)`` on (normalised) image features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, class_text: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("alpha", alpha)
        self.register_buffer("class_text", class_text)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias + self.alpha * (features @ self.class_text.T)


def class_sums(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """K x d: the sum of each class's features (upstream's ``compute_centroids``)."""
    return F.one_hot(y, n_classes).to(x.dtype).T @ x


def init_alpha(text_logits: torch.Tensor, y: torch.Tensor, n_classes: int, scale: float) -> float:
    """``scale`` x the mean over classes of the mean similarity of a class's images to its own prompt."""
    own = [text_logits[y == c, c].mean() for c in range(n_classes) if bool((y == c).any())]
    return float(scale * torch.stack(own).double().mean())


def w_step(x: torch.Tensor, n_classes: int, p: dict) -> float:
    if p["w_step"] == "shots":
        return math.log(len(x) / n_classes + 1) * float(p["w_step_scale"])
    largest = float(torch.linalg.eigvalsh((x.T @ x).double())[-1])
    return 4 * len(x) / largest


def alpha_step(text_logits: torch.Tensor) -> float:
    return len(text_logits) / (4 * float(text_logits.pow(2).sum(dim=0).max()))


def fit(data, params, seed):
    p = {**SPEC["defaults"], **params}
    seed_everything(seed)
    x, y = tensor(data.train_features), labels_tensor(data.train_labels)
    class_text = tensor(data.class_text)
    n_classes, dim = class_text.shape
    val_x, val_y = tensor(data.val_features), labels_tensor(data.val_labels)

    linear = nn.Linear(dim, n_classes)  # its bias as upstream's classifier draws it (global RNG, seeded)
    weight = nn.Parameter(class_sums(x, y, n_classes))
    bias = nn.Parameter(linear.bias.detach().clone())
    text_logits, val_text = x @ class_text.T, val_x @ class_text.T
    alpha0 = init_alpha(text_logits, y, n_classes, p["alpha_init_scale"])
    alpha = nn.Parameter(torch.full((n_classes,), alpha0))
    lr_w, lr_alpha = w_step(x, n_classes, p), alpha_step(text_logits)
    # torch.optim.SGD's update (bit-identical) without its class, which imports torch._dynamo
    optimizer = FunctionalSGD([weight, bias], lr=lr_w, momentum=p["momentum"])

    history = {"train_loss": [], "val_accuracy": []}
    best = None
    for epoch in range(int(p["epochs"])):
        logits = x @ weight.T + bias + alpha * text_logits
        loss = F.cross_entropy(logits, y)
        check_finite(loss, epoch, lr_w)
        optimizer.zero_grad()
        loss.backward()  # alpha's gradient adds to the ones before: upstream never zeroes it
        optimizer.step()
        if (epoch + 1) % int(p["alpha_every"]) == 0:
            with torch.no_grad():
                alpha -= lr_alpha * alpha.grad
        val_acc = None
        if len(val_y):
            with torch.no_grad():
                val_logits = val_x @ weight.T + bias + alpha * val_text
            val_acc = float((val_logits.argmax(1) == val_y).float().mean())
        history["train_loss"].append(loss.item())
        history["val_accuracy"].append(val_acc)
        # upstream: "if acc_val >= best_acc" -- the last epoch of the best validation accuracy;
        # without a validation split, the last epoch
        key = val_acc if val_acc is not None else epoch
        if best is None or key >= best[0]:
            best = (key, epoch, weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
    _, best_epoch, w, b, a = best
    state = {"weight": w, "bias": b, "alpha": a, "class_text": class_text}
    info = {
        "lr_w": lr_w,
        "lr_alpha": lr_alpha,
        "alpha_init": alpha0,
        "alpha": a.tolist(),
        "best_epoch": best_epoch + 1,  # 1-based
        "val_accuracy": history["val_accuracy"][best_epoch],
        "trainable_parameters": int(w.numel() + b.numel() + a.numel()),
        **history_record(history, int(p["epochs"])),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    return LPPlusPlusHead(s["weight"], s["bias"], s["alpha"], s["class_text"])
