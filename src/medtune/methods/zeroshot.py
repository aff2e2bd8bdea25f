"""Zero-shot CLIP: logits = exp(logit_scale) * f @ t.T with class-prompt features t."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPEC = {
    "training": "none",
    "label": "zero-shot",
    "order": 0,
}


class TextClassifier(nn.Module):
    def __init__(self, class_text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("class_text", class_text)
        self.logit_scale = float(logit_scale)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(features) @ self.class_text.T


def state(class_text, logit_scale: float) -> dict:
    return {"module": __name__, "class_text": torch.as_tensor(class_text).float(), "logit_scale": float(logit_scale)}


def fit(data, params, seed):
    return state(data.class_text, data.logit_scale), {}


def build_head(s: dict) -> nn.Module:
    return TextClassifier(s["class_text"], s["logit_scale"])
