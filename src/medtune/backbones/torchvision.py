"""The torchvision family: an ImageNet classifier's trunk as a vision-only encoder (the ResNet-50 baseline
pathology benchmarks list beside the foundation models).

    {family: torchvision, model: resnet50-imagenet, checkpoint: weights/resnet50-11ad3fa6.pth}
    {family: torchvision, arch: resnet18, checkpoint: ...}     # any torchvision.models name

The model is ``torchvision.models.get_model(arch)``; the checkpoint is its own state dict (the
file torchvision downloads), loaded strictly, classifier included; the classifier is then
replaced by the identity, so the embedding is the globally pooled features. No text tower.
Without a checkpoint the weights are random (``init_seed``): nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtune.models import Backbone, BackboneError, load_strict, read_weights

SPEC = {
    "label": "torchvision ImageNet trunk",
    "text_tower": False,
    "keys": ["model", "arch", "checkpoint", "image_size", "mean", "std"],
    "required": [["model", "arch"]],
    "presets": {
        "resnet50-imagenet": {
            "label": "ResNet-50 (ImageNet)",
            "arch": "resnet50",
            "weights": "ResNet50_Weights.IMAGENET1K_V2",
            "embedding": "global average pool, 2048",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 25557032,
            "published": "25,557,032 (torchvision ResNet50_Weights meta num_params, classifier included)",
            "source": "torchvision.models.resnet50",
            "licence": "BSD-3-Clause (torchvision); ImageNet weights",
            "transform": "Resize 232 bilinear, CenterCrop 224 (IMAGENET1K_V2)",
        },
    },
}


class TorchvisionEncoder(nn.Module):
    """``encode_image``: the classifier's input (its pooled features), the classifier itself replaced by the identity."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        for head in ("fc", "classifier", "head", "heads"):
            if isinstance(getattr(trunk, head, None), nn.Module):
                setattr(trunk, head, nn.Identity())
                break
        else:
            raise BackboneError(f"{type(trunk).__name__} has no classifier (fc, classifier, head or heads) to remove")
        self.trunk = trunk

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def preset(spec: dict[str, Any]) -> dict[str, Any]:
    return SPEC["presets"][spec["model"]] if spec.get("model") is not None else {}


def create(spec: dict[str, Any]) -> nn.Module:
    """The classifier as torchvision builds it, random weights (under ``torch.device('meta')``: no memory)."""
    import torchvision

    return torchvision.models.get_model(spec.get("arch") or preset(spec)["arch"], weights=None)


def encoder(spec: dict[str, Any]) -> TorchvisionEncoder:
    """The backbone's model with random weights (under ``torch.device('meta')``: no memory)."""
    return TorchvisionEncoder(create(spec))


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    found = preset(spec)
    model = create(spec)
    checkpoint = weights or spec.get("checkpoint")
    if checkpoint is not None:
        load_strict(model, read_weights(checkpoint), f"backbone {name!r}: checkpoint {checkpoint}")
    image_size = spec.get("image_size") or found.get("image_size", 224)
    mean, std = spec.get("mean") or found.get("mean"), spec.get("std") or found.get("std")
    if mean is None or std is None:
        raise BackboneError(f"backbone {name!r}: set backbones.{name}.mean and .std (the statistics its weights were trained with)")
    return Backbone(name, TorchvisionEncoder(model), None, int(image_size), tuple(mean), tuple(std))
