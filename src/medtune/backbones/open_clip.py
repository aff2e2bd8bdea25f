"""The open_clip family: open_clip model names with pretrained tags, ``hf-hub:`` ids and local checkpoints.

``{arch: ViT-B-16, pretrained: openai}``, ``{arch: hf-hub:wisdomik/QuiltNet-B-32}``,
``{arch: ViT-B-16, checkpoint: pathclip-base.pt, quick_gelu: true}``, or an untrained
``{arch: medtune-tiny}`` (weights drawn from ``init_seed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from medtune.models import Backbone, BackboneError, check_architecture, preprocess_of, registered_open_clip

SPEC = {
    "label": "open_clip CLIP",
    "text_tower": True,
    "open_clip_towers": True,
    "keys": ["arch", "pretrained", "checkpoint", "quick_gelu", "pretrain"],
    "required": [["arch"]],
}
# the preprocessing a pretrained tag declares; applied when a local checkpoint replaces the tag's weights
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    """``weights`` (an open_clip state dict, e.g. the workflow's own pretraining) replaces ``checkpoint``."""
    arch = spec["arch"]
    registered_open_clip(arch)  # open_clip with the optional towers this architecture needs
    check_architecture(arch)
    model, tokenizer = _open_clip_model(name, spec, weights or spec.get("checkpoint"))
    return Backbone(name, model, tokenizer, *preprocess_of(model))


def _open_clip_model(name: str, spec: dict[str, Any], checkpoint: str | Path | None) -> tuple[torch.nn.Module, Callable]:
    open_clip = registered_open_clip()
    arch, tag = spec["arch"], spec.get("pretrained")
    quick_gelu = resolve_quick_gelu(name, spec)
    model = open_clip.create_model(
        arch,
        # a local checkpoint replaces every weight: don't download the tag's only to overwrite them
        pretrained=None if checkpoint is not None else tag,
        force_quick_gelu=quick_gelu,
        force_preprocess_cfg=_tag_preprocess(arch, tag) if checkpoint is not None else None,
        weights_only=True,
        output_dict=True,
    )
    if checkpoint is not None:
        open_clip.load_checkpoint(model, str(checkpoint), weights_only=True)
    return model, open_clip.get_tokenizer(arch)


def resolve_quick_gelu(name: str, spec: dict[str, Any]) -> bool:
    """The activation the weights were trained with (open_clip #771).

    The wrong one loads without any error and silently costs accuracy, so it is
    taken from where the weights declare it (pretrained tag, hf-hub config,
    ``-quickgelu`` architecture), a contradicting ``quick_gelu`` is refused, and a
    local checkpoint for an architecture that has OpenAI-lineage (QuickGELU)
    weights must say which it is. open_clip itself only warns on a tag mismatch.
    """
    arch, explicit = spec["arch"], spec.get("quick_gelu")
    declared, where = _declared_quick_gelu(arch, spec.get("pretrained"))
    if declared is not None and explicit is not None and bool(explicit) != declared:
        raise BackboneError(
            f"backbone {name!r}: quick_gelu: {str(explicit).lower()} contradicts {where} (trained with quick_gelu={str(declared).lower()})"
        )
    if declared is not None:
        return declared
    if explicit is not None:
        return bool(explicit)
    if spec.get("checkpoint") is not None and _has_quick_gelu_weights(arch):
        raise BackboneError(
            f"backbone {name!r}: {arch} has OpenAI-lineage weights that need QuickGELU, so checkpoint "
            f"{spec['checkpoint']} may too; set backbones.{name}.quick_gelu: true|false explicitly"
        )
    return False


def _declared_quick_gelu(arch: str, tag: str | None) -> tuple[bool | None, str]:
    open_clip = registered_open_clip()
    if arch.startswith(("hf-hub:", "local-dir:")):
        # the repo's open_clip_config.json is what open_clip builds; no quick_gelu there means GELU
        return bool(open_clip.get_model_config(arch).get("quick_gelu", False)), f"{arch}'s open_clip_config.json"
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False)), f"pretrained tag {tag!r}"
    if (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        return True, f"architecture {arch}"
    return None, ""


def _has_quick_gelu_weights(arch: str) -> bool:
    open_clip = registered_open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    return any(open_clip.get_pretrained_cfg(arch, t).get("quick_gelu", False) for t in tags)


def _tag_preprocess(arch: str, tag: str | None) -> dict[str, Any] | None:
    tag_cfg = registered_open_clip().get_pretrained_cfg(arch, tag) if tag else {}
    return {k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg} or None


