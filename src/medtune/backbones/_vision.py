"""What the vision-only families (timm, transformers) share: the embedding rules over a token sequence.

A vision transformer's last layer gives tokens ``[CLS, registers..., patches...]``; the
published models differ only in what they make of them (UNI, H-optimus: the class token;
Virchow, Virchow2: the class token and the mean of the patch tokens). The patch tokens
start after ``num_prefix_tokens`` (class token and registers), never at a hard-coded 1.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDINGS = ("cls", "cls+mean", "mean", "pooled")


def embed(tokens: torch.Tensor, num_prefix_tokens: int, rule: str) -> torch.Tensor:
    """B x D (or B x 2D for ``cls+mean``) from B x T x D tokens after the final norm."""
    if rule == "cls":
        return tokens[:, 0]
    patches = tokens[:, num_prefix_tokens:].mean(dim=1)
    if rule == "mean":
        return patches
    if rule == "cls+mean":
        return torch.cat([tokens[:, 0], patches], dim=-1)
    raise ValueError(f"embedding {rule!r}: expected one of {', '.join(EMBEDDINGS)}")


class VisionEncoder(nn.Module):
    """An image-only backbone: ``encode_image`` applies the model's embedding rule to its tokens.

    The wrapped model is ``trunk``, so the state dict is the published one under ``trunk.``.
    Subclasses give ``tokens(x)`` (after the final norm), ``pooled(x)`` and ``num_prefix_tokens``.
    """

    def __init__(self, trunk: nn.Module, embedding: str) -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding {embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
        self.trunk = trunk
        self.embedding = embedding

    @property
    def num_prefix_tokens(self) -> int:
        raise NotImplementedError

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding == "pooled":
            return self.pooled(x)
        return embed(self.tokens(x), self.num_prefix_tokens, self.embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)
