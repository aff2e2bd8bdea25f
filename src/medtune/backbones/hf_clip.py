"""The hf_clip family: a Hugging Face ``transformers.CLIPModel`` folder (PLIP) as an open_clip model.

``{family: hf_clip, arch: ViT-B-32, checkpoint: plip/}``: ``arch`` names the open_clip
architecture the checkpoint is (checked against its config.json), ``checkpoint`` the
``save_pretrained`` folder or one weights file in it. The conversion is :mod:`medtune.hf_clip`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.models import Backbone, BackboneError, check_architecture, preprocess_of, registered_open_clip

SPEC = {
    "label": "Hugging Face CLIPModel",
    "text_tower": True,
    "open_clip_towers": True,
    "keys": ["arch", "checkpoint", "quick_gelu"],
    "required": [["arch"], ["checkpoint"]],
}


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    """``weights`` (an open_clip state dict, e.g. the workflow's own fine-tuning) goes on top of the converted model."""
    from medtune.hf_clip import load_hf_clip

    open_clip = registered_open_clip(spec["arch"])
    check_architecture(spec["arch"])
    if spec.get("checkpoint") is None:
        raise BackboneError(f"backbone {name!r}: family hf_clip needs 'checkpoint' (a transformers CLIPModel folder)")
    model, cfg = load_hf_clip(spec["checkpoint"], quick_gelu=spec.get("quick_gelu"))
    _check_same_shape(name, spec["arch"], cfg)
    if weights is not None:
        open_clip.load_checkpoint(model, str(weights), weights_only=True)
    # HF CLIP's BPE is the original CLIP vocabulary: open_clip's SimpleTokenizer at HF's context length
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return Backbone(name, model, tokenizer, *preprocess_of(model))


def _check_same_shape(name: str, arch: str, cfg: dict[str, Any]) -> None:
    """``arch`` names the open_clip architecture the HF checkpoint is; say so when it is not.

    The model is built from the checkpoint's own config, so a wrong ``arch`` would
    otherwise pass unnoticed and mislabel every result.
    """
    open_clip = registered_open_clip()
    expected = open_clip.get_model_config(arch)
    defaults = {"vision_cfg": open_clip.CLIPVisionCfg(), "text_cfg": open_clip.CLIPTextCfg()}
    differ = [f"embed_dim {cfg['embed_dim']} vs {expected['embed_dim']}"] if expected["embed_dim"] != cfg["embed_dim"] else []
    for tower, default in defaults.items():
        for key, value in cfg[tower].items():
            want = expected.get(tower, {}).get(key, getattr(default, key))
            if key != "norm_kwargs" and value != want:
                differ.append(f"{tower}.{key} {value} vs {want}")
    if differ:
        raise BackboneError(f"backbone {name!r}: checkpoint is not a {arch} (checkpoint vs {arch}: {', '.join(differ)})")
