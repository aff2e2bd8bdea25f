"""Zero-shot CLIP: logits = exp(logit_scale) * f @ t.T with class-prompt features t.

The zero-shot job is the pretrained backbone's evaluation: its class-prompt classifier
(a text tower's) and its own image embedding's retrieval and invariance (any backbone's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPEC = {
    "training": "none",
    "requires": ["text_tower"],
    "label": "zero-shot",
    "order": 0,
}


class ImageEmbedding(nn.Module):
    """The backbone's own image feature, normalised: what retrieval (HA@K) and embedding
    invariance measure. Alone (no class text) it is the head of a backbone without a text
    tower, which has no zero-shot classifier: it embeds and does not classify."""

    classifies = False

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1)


class TextClassifier(ImageEmbedding):
    classifies = True

    def __init__(self, class_text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("class_text", class_text)
        self.logit_scale = float(logit_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(features) @ self.class_text.T


def state(class_text, logit_scale: float | None) -> dict:
    """The zero-shot head; without class text (a backbone with no text tower) the embedding alone."""
    if class_text is None:
        return {"module": __name__, "class_text": None, "logit_scale": None}
    return {"module": __name__, "class_text": torch.as_tensor(class_text).float(), "logit_scale": float(logit_scale)}


def fit(data, params, seed):
    return state(data.class_text, data.logit_scale), {}


def build_head(s: dict) -> nn.Module:
    return ImageEmbedding() if s["class_text"] is None else TextClassifier(s["class_text"], s["logit_scale"])
