"""The timm family: vision-only encoders built by ``timm.create_model`` (UNI, UNI2-h, Virchow, H-optimus, ...).

A config names a published model by its preset, or a timm architecture with its own kwargs::

    {family: timm, model: uni2-h, checkpoint: weights/uni2-h/}       # pytorch_model.bin or model.safetensors
    {family: timm, model: uni2-h}                                    # from the hub (gated: log in first)
    {family: timm, arch: "hf-hub:MahmoodLab/UNI2-h"}                 # the same: a preset's hub id takes its kwargs
    {family: timm, arch: vit_small_patch16_224, kwargs: {...}, embedding: cls}   # any timm model

A preset is the model's published ``timm.create_model`` call (base architecture and
keyword arguments, layer classes by name), its embedding rule, input size and mean/std,
its hub id and its parameter count with where that count comes from. ``kwargs`` in the
config go on top of the preset's. A local checkpoint is loaded strictly: every key of the
published layout, nothing left over. No text tower: only methods on image features run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medtune.backbones._vision import VisionEncoder
from medtune.models import Backbone, BackboneError, load_strict, read_weights

# The presets' sources (read at these commits): mahmoodlab/UNI@42715ef uni/get_encoder/get_encoder.py,
# mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py, the models' Hugging Face cards.
# params: the count the preset builds (tests/test_backbone_fidelity.py builds each on the meta device);
# published: the figure the authors give, where they give one.
SPEC = {
    "label": "timm vision encoder",
    "text_tower": False,
    "keys": ["model", "arch", "checkpoint", "kwargs", "embedding", "image_size", "mean", "std"],
    "required": [["model", "arch"]],
    "presets": {
        "uni": {
            "label": "UNI",
            "arch": "vit_large_patch16_224",
            "kwargs": {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
            "hub": "MahmoodLab/UNI",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 303350784,
            "published": "ViT-L/16 (UNI README)",
            "source": "mahmoodlab/UNI@42715ef uni/get_encoder/get_encoder.py",
            "licence": "CC-BY-NC-ND-4.0, gated",
            "transform": "Resize 224, CenterCrop 224",
        },
        "uni2-h": {
            "label": "UNI2-h",
            "arch": "vit_giant_patch14_224",
            "kwargs": {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                       "embed_dim": 1536, "mlp_ratio": 5.33334, "num_classes": 0, "no_embed_class": True,
                       "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True},
            "hub": "MahmoodLab/UNI2-h",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 681394176,
            "published": "ViT-h/14-reg8 (UNI README)",
            "source": "mahmoodlab/UNI@42715ef uni/get_encoder/get_encoder.py (mlp_ratio 2.66667*2)",
            "licence": "CC-BY-NC-ND-4.0, gated",
            "transform": "Resize 224, CenterCrop 224",
        },
        "virchow": {
            "label": "Virchow",
            "arch": "vit_huge_patch14_224",
            "kwargs": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
                       "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
            "hub": "paige-ai/Virchow",
            "embedding": "cls+mean",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 631229184,
            "published": "632M (Virchow model card)",
            "source": "mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py; paige-ai/Virchow card",
            "licence": "Apache-2.0, gated (institutional e-mail)",
            "transform": "Resize 224 bicubic",
        },
        "virchow2": {
            "label": "Virchow2",
            "arch": "vit_huge_patch14_224",
            "kwargs": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                       "global_pool": "", "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
            "hub": "paige-ai/Virchow2",
            "embedding": "cls+mean",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 631239424,
            "published": "632M (arXiv 2408.00738)",
            "source": "mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py; paige-ai/Virchow2 card",
            "licence": "CC-BY-NC-ND-4.0, gated",
            "transform": "Resize 224 bicubic",
        },
        "h-optimus-0": {
            "label": "H-optimus-0",
            "arch": "vit_giant_patch14_reg4_dinov2",
            "kwargs": {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True},
            "hub": "bioptimus/H-optimus-0",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.707223, 0.578729, 0.703617],
            "std": [0.211883, 0.230117, 0.177517],
            "params": 1134774272,
            "published": "1.1B (H-optimus-0 card)",
            "source": "mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py; bioptimus/H-optimus-0 card",
            "licence": "Apache-2.0, gated",
            "transform": "ToTensor at 224 px (0.5 um/px), no resize",
        },
        "h-optimus-1": {
            "label": "H-optimus-1",
            "arch": "vit_giant_patch14_reg4_dinov2",
            "kwargs": {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True},
            "hub": "bioptimus/H-optimus-1",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.707223, 0.578729, 0.703617],
            "std": [0.211883, 0.230117, 0.177517],
            "params": 1134774272,
            "published": "1.1B (H-optimus-1 card)",
            "source": "mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py",
            "licence": "CC-BY-NC-ND-4.0, gated (manual approval)",
            "transform": "ToTensor at 224 px (0.5 um/px), no resize",
        },
        "prov-gigapath": {
            "label": "Prov-GigaPath",
            "arch": "vit_giant_patch14_dinov2",
            "kwargs": {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                       "mlp_ratio": 5.33334, "num_classes": 0, "dynamic_img_size": True},
            "hub": "prov-gigapath/prov-gigapath",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 1134953984,
            "published": "1.13B (prov-gigapath README)",
            "source": "mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py (SwiGLUPacked, SiLU and "
                      "init_values come from timm's vit_giant_patch14_dinov2)",
            "licence": "prov-gigapath licence (Hugging Face), gated; code Apache-2.0",
            "transform": "Resize 256 bicubic, CenterCrop 224",
        },
        "kaiko-vits16": {
            "label": "Kaiko ViT-S/16",
            "arch": "vit_small_patch16_224",
            "kwargs": {"dynamic_img_size": True, "num_classes": 0},
            "hub": "1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "params": 21665664,
            "published": "ViT-S/16 (kaiko-ai/towards_large_pathology_fms)",
            "source": "kaiko-ai/towards_large_pathology_fms hubconf.py; TRIDENT's hub mirror",
            "licence": "Kaiko non-commercial",
            "transform": "Resize 224, CenterCrop 224",
        },
        "kaiko-vitb16": {
            "label": "Kaiko ViT-B/16",
            "arch": "vit_base_patch16_224",
            "kwargs": {"dynamic_img_size": True, "num_classes": 0},
            "hub": "1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "params": 85798656,
            "published": "ViT-B/16 (kaiko-ai/towards_large_pathology_fms)",
            "source": "kaiko-ai/towards_large_pathology_fms hubconf.py; TRIDENT's hub mirror",
            "licence": "Kaiko non-commercial",
            "transform": "Resize 224, CenterCrop 224",
        },
        # Virchow2's layout (SwiGLUPacked, SiLU, 4 registers, class token + mean) at a size that
        # runs in seconds on a CPU: the workflow tests' vision-only backbone, untrained (init_seed)
        "medtune-tiny-vit": {
            "label": "tiny ViT (Virchow2 layout)",
            "arch": "vit_small_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1e-5,
                       "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                       "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
            "embedding": "cls+mean",
            "image_size": 32,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 32628,
            "source": "medtune: a test architecture",
            "licence": "none (random weights)",
        },
    },
}

# layer classes a preset or config names (JSON and YAML carry no callables); timm.layers, then torch.nn
_LAYER_KEYS = ("mlp_layer", "act_layer", "norm_layer", "block_fn", "embed_layer")


class TimmEncoder(VisionEncoder):
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.trunk.num_prefix_tokens)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_head(self.trunk.forward_features(x), pre_logits=True)


def preset(spec: dict[str, Any]) -> dict[str, Any]:
    """The preset a config entry names by ``model``, or whose hub id its ``arch`` is; {} for none."""
    presets = SPEC["presets"]
    if spec.get("model") is not None:
        return presets[spec["model"]]
    arch = str(spec.get("arch", ""))
    hub = arch.split(":", 1)[1].split("@")[0] if arch.startswith(("hf-hub:", "hf_hub:")) else None
    return next((p for p in presets.values() if hub is not None and p.get("hub") == hub), {})


def create_kwargs(spec: dict[str, Any], name: str = "") -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments: the preset's, then the config's, layer names resolved."""
    kwargs = {**preset(spec).get("kwargs", {}), **(spec.get("kwargs") or {})}
    return {k: _layer(v, k, name) if k in _LAYER_KEYS and isinstance(v, str) else v for k, v in kwargs.items()}


def _layer(class_name: str, key: str, name: str):
    import timm.layers

    for module in (timm.layers, torch.nn):
        if callable(getattr(module, class_name, None)):  # a class, or a partial of one (SwiGLUPacked)
            return getattr(module, class_name)
    raise BackboneError(f"backbone {name!r}: kwargs.{key}: {class_name!r} is neither a timm.layers nor a torch.nn class")


def create(spec: dict[str, Any], name: str = "", pretrained: bool = False) -> torch.nn.Module:
    """The timm model of a config entry, without its checkpoint (call it under ``torch.device('meta')``
    to see the full-size architecture without memory)."""
    import timm

    found = preset(spec)
    arch = spec.get("arch") or (f"hf-hub:{found['hub']}" if pretrained else found["arch"])
    return timm.create_model(arch, pretrained=pretrained, **create_kwargs(spec, name))


def encoder(spec: dict[str, Any]) -> TimmEncoder:
    """The backbone's model with random weights (under ``torch.device('meta')``: no memory)."""
    return TimmEncoder(create(spec), spec.get("embedding") or preset(spec).get("embedding", "cls"))


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    """``weights`` (a state dict in the model's published layout) replaces ``checkpoint``."""
    found = preset(spec)
    checkpoint = weights or spec.get("checkpoint")
    arch = str(spec.get("arch", ""))
    # no checkpoint: a hub id (given, or the preset's) downloads its weights; a bare architecture is random (init_seed)
    from_hub = checkpoint is None and (arch.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or (not arch and "hub" in found))
    trunk = create(spec, name, pretrained=from_hub)
    if checkpoint is not None:
        load_strict(trunk, read_weights(checkpoint), f"backbone {name!r}: checkpoint {checkpoint}")
    data = trunk.pretrained_cfg or {}
    image_size = spec.get("image_size") or found.get("image_size") or int(data.get("input_size", (3, 224, 224))[-1])
    mean = spec.get("mean") or found.get("mean") or data.get("mean")
    std = spec.get("std") or found.get("std") or data.get("std")
    embedding = spec.get("embedding") or found.get("embedding", "cls")
    if mean is None or std is None:
        raise BackboneError(f"backbone {name!r}: {arch} declares no mean/std; set backbones.{name}.mean and .std")
    return Backbone(name, TimmEncoder(trunk, embedding), None, int(image_size), tuple(mean), tuple(std))
