"""Hugging Face ``transformers.CLIPModel`` checkpoints (e.g. PLIP, ``vinid/plip``) as open_clip models.

HF's CLIPModel and open_clip's ``CLIP`` compute the same function: pre-LN
transformers, class-token pooling with ``ln_post`` for the image, argmax (EOT)
pooling after ``ln_final`` for the text, bias-free projections. Only parameter
names and layouts differ, so a checkpoint is converted once and the rest of
medtune sees an ordinary open_clip model.

The checkpoint is read directly (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin`` with ``weights_only=True``); ``transformers`` is not needed.

Tokenizer: HF's CLIPTokenizer uses the original CLIP BPE (vocab 49408, the same
merges as open_clip's ``SimpleTokenizer``). HF pads with ``<|endoftext|>`` and
open_clip with 0, which does not change the features: the causal mask hides
every position after the first end-of-text token, where both pool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CLIP_VOCAB_SIZE = 49408  # the BPE open_clip's SimpleTokenizer ships

# HF serialises only what differs from these (CLIPTextConfig / CLIPVisionConfig defaults).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # HF hidden_act -> open_clip quick_gelu

# Per encoder layer: HF name -> open_clip name (q/k/v are handled apart: open_clip fuses them).
BLOCK_RENAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
# Whole-model renames; the two projections are nn.Linear in HF (out x in) and plain matrices
# applied as ``x @ proj`` in open_clip (in x out), hence the transpose.
RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
TOWERS = {"vision_model": ("visual.transformer", "vision_cfg"), "text_model": ("transformer", "text_cfg")}


class HFClipError(ValueError):
    """Not a convertible HF CLIPModel checkpoint; the message says what is wrong."""


def read_hf_clip(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The HF config and state dict of a ``save_pretrained`` folder, or of one weights file in it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise HFClipError(f"{folder}: no config.json next to the weights (expected a save_pretrained folder)")
    from medtune.models import read_weights

    return json.loads(config_file.read_text()), read_weights(path)


def tower_configs(hf_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Text and vision configs with HF's defaults filled in.

    Configs written by transformers < 4.23 (PLIP's among them) keep the real values
    in ``*_config_dict``; HF lets those win, and so does this.
    """
    text = {**TEXT_DEFAULTS, **(hf_config.get("text_config") or {}), **(hf_config.get("text_config_dict") or {})}
    vision = {**VISION_DEFAULTS, **(hf_config.get("vision_config") or {}), **(hf_config.get("vision_config_dict") or {})}
    return text, vision


def open_clip_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config (``CLIP(**cfg)`` keyword arguments) with HF's shapes."""
    if hf_config.get("model_type", "clip") != "clip":
        raise HFClipError(f"model_type {hf_config['model_type']!r} is not an HF CLIPModel")
    text, vision = tower_configs(hf_config)
    acts = {text["hidden_act"], vision["hidden_act"]}
    if len(acts) != 1 or not acts <= ACTIVATIONS.keys():
        raise HFClipError(f"hidden_act {sorted(acts)}: only one of {sorted(ACTIVATIONS)} for both towers converts")
    if vision["num_channels"] != 3:
        raise HFClipError(f"num_channels {vision['num_channels']}: open_clip's ViT takes RGB")
    if text["vocab_size"] != CLIP_VOCAB_SIZE:
        # any other vocabulary comes with its own tokenizer, which open_clip's SimpleTokenizer is not
        raise HFClipError(f"vocab_size {text['vocab_size']}: only the original CLIP vocabulary ({CLIP_VOCAB_SIZE}) converts")
    return {
        "embed_dim": int(hf_config.get("projection_dim", 512)),
        "quick_gelu": ACTIVATIONS[acts.pop()],
        "vision_cfg": _vision_cfg(vision),
        "text_cfg": _text_cfg(text),
    }


def _vision_cfg(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "image_size": int(v["image_size"]),
        "patch_size": int(v["patch_size"]),
        "width": int(v["hidden_size"]),
        "layers": int(v["num_hidden_layers"]),
        "head_width": _head_width(v),
        "mlp_ratio": _mlp_ratio(v),
        **_norm_kwargs(v),
    }


def _text_cfg(t: dict[str, Any]) -> dict[str, Any]:
    _head_width(t)  # only for its divisibility check
    return {
        "context_length": int(t["max_position_embeddings"]),
        "vocab_size": int(t["vocab_size"]),
        "width": int(t["hidden_size"]),
        "heads": int(t["num_attention_heads"]),
        "layers": int(t["num_hidden_layers"]),
        "mlp_ratio": _mlp_ratio(t),
        **_norm_kwargs(t),
    }


def _head_width(cfg: dict[str, Any]) -> int:
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if width % heads:
        raise HFClipError(f"hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return width // heads


def _mlp_ratio(cfg: dict[str, Any]) -> float:
    # open_clip sizes the MLP as int(width * mlp_ratio); make sure that gives HF's intermediate_size back
    width, inner = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    ratio = inner / width
    if int(width * ratio) != inner:
        raise HFClipError(f"intermediate_size {inner} cannot be expressed as hidden_size {width} x mlp_ratio")
    return ratio


def _norm_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    # open_clip's LayerNorm already uses HF's default eps; only say so when a checkpoint differs
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    return {} if eps == 1e-5 else {"norm_kwargs": {"eps": eps}}


def convert_state_dict(hf_state: dict[str, torch.Tensor], model_cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """HF CLIPModel parameters renamed and reshaped into open_clip ``CLIP``'s layout.

    Every HF parameter must be used: a leftover one means a model this
    conversion does not understand, and silently dropping it would change outputs.
    """
    remaining = {k: v for k, v in hf_state.items() if not k.endswith("position_ids")}  # buffers, not weights
    out = {new: _take(remaining, old) for old, new in RENAMES.items()}
    out |= {new: _take(remaining, old).t() for old, new in TRANSPOSED.items()}
    for hf_tower, (oc_prefix, cfg_key) in TOWERS.items():
        for i in range(model_cfg[cfg_key]["layers"]):
            out |= _convert_block(remaining, f"{hf_tower}.encoder.layers.{i}.", f"{oc_prefix}.resblocks.{i}.")
    if remaining:
        raise HFClipError(f"{len(remaining)} HF parameters have no open_clip counterpart, e.g. {sorted(remaining)[0]}")
    return out


def _convert_block(state: dict[str, torch.Tensor], hf: str, oc: str) -> dict[str, torch.Tensor]:
    out = {}
    for old, new in BLOCK_RENAMES.items():
        for kind in ("weight", "bias"):
            out[f"{oc}{new}.{kind}"] = _take(state, f"{hf}{old}.{kind}")
    # nn.MultiheadAttention keeps q, k and v as one (3 x width, width) matrix, in that order
    for kind in ("weight", "bias"):
        parts = [_take(state, f"{hf}self_attn.{p}_proj.{kind}") for p in "qkv"]
        out[f"{oc}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
    return out


def _take(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise HFClipError(f"not an HF CLIPModel state dict: {key} is missing")
    return state.pop(key)


def preprocess_cfg(path: str | Path, image_size: int) -> dict[str, Any]:
    """open_clip preprocessing for the checkpoint: its own ``preprocessor_config.json`` mean/std if present.

    PLIP and OpenAI's HF checkpoints ship OpenAI's statistics, which are also the default.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    path = Path(path)
    file = (path if path.is_dir() else path.parent) / "preprocessor_config.json"
    saved = json.loads(file.read_text()) if file.is_file() else {}
    return {
        "size": (image_size, image_size),
        "mean": tuple(saved.get("image_mean", OPENAI_DATASET_MEAN)),
        "std": tuple(saved.get("image_std", OPENAI_DATASET_STD)),
        "interpolation": "bicubic",  # CLIPImageProcessor's default resample (PIL BICUBIC)
        "resize_mode": "shortest",
    }


def load_hf_clip(path: str | Path, quick_gelu: bool | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An open_clip ``CLIP`` holding the HF checkpoint at ``path``, and its model config.

    ``quick_gelu``, when given, must agree with the checkpoint's ``hidden_act``:
    the other activation loads without error and quietly changes every feature.
    """
    import open_clip

    hf_config, hf_state = read_hf_clip(path)
    cfg = open_clip_config(hf_config)
    if quick_gelu is not None and bool(quick_gelu) != cfg["quick_gelu"]:
        act = "quick_gelu" if cfg["quick_gelu"] else "gelu"
        raise HFClipError(f"quick_gelu: {str(quick_gelu).lower()} contradicts the checkpoint's hidden_act {act!r}")
    model = open_clip.CLIP(**cfg, output_dict=True)
    model.load_state_dict(convert_state_dict(hf_state, cfg), strict=True)
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg(path, cfg["vision_cfg"]["image_size"]))
    return model, cfg
