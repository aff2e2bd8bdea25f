"""The transformers family: vision-only encoders saved as Hugging Face ``AutoModel`` folders (Phikon, Phikon-v2).

    {family: transformers, model: phikon-v2, checkpoint: weights/phikon-v2/}   # config.json + model.safetensors
    {family: transformers, model: phikon-v2}                                   # from the hub (owkin/phikon-v2)
    {family: transformers, arch: owkin/phikon-v2}                              # any AutoModel repo id or folder

The model is built by ``transformers.AutoModel.from_pretrained`` from the folder's own
config.json (the library maps the published key names to its own); every published weight
must load, and only the pooler may be missing (Phikon's checkpoint has none; ``AutoModel``
adds one). Mean, std and input size come from the config, then the folder's
preprocessor_config.json, then the preset. A preset's ``config`` is the architecture with no
weights (the fidelity tests build it on the meta device). No text tower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medtune.backbones._vision import VisionEncoder
from medtune.models import Backbone, BackboneError, load_strict, read_weights

SPEC = {
    "label": "transformers vision encoder",
    "text_tower": False,
    "keys": ["model", "arch", "checkpoint", "embedding", "image_size", "mean", "std"],
    "required": [["model", "arch", "checkpoint"]],
    "presets": {
        "phikon": {
            "label": "Phikon",
            "config": {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "patch_size": 16, "image_size": 224, "layer_norm_eps": 1e-12, "qkv_bias": True},
            "hub": "owkin/phikon",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 86389248,
            "published": "ViT-B/16 (Phikon card); 85,798,656 without the pooler AutoModel adds",
            "source": "owkin/phikon config.json as read in FOUNDATION.md; TRIDENT ViTModel(add_pooling_layer=False)",
            "licence": "see the owkin/phikon card, ungated",
            "transform": "Resize 224 (ViTImageProcessor)",
        },
        "phikon-v2": {
            "label": "Phikon-v2",
            "config": {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "patch_size": 16, "image_size": 224, "mlp_ratio": 4, "layerscale_value": 1e-5,
                       "use_swiglu_ffn": False, "layer_norm_eps": 1e-6},
            "hub": "owkin/phikon-v2",
            "embedding": "cls",
            "image_size": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 303351808,
            "published": "ViT-L/16 (arXiv 2409.09173)",
            "source": "ViT-L/16 DINOv2 without registers (arXiv 2409.09173, eva, TRIDENT); owkin/phikon-v2 config.json not read: "
                      "its image_size (224 assumed) sets the positional embedding's length",
            "licence": "see the owkin/phikon-v2 card, ungated",
            "transform": "Resize 224 (BitImageProcessor)",
        },
        # Phikon-v2's layout at a size that runs in seconds on a CPU, untrained (init_seed)
        "medtune-tiny-dinov2": {
            "label": "tiny DINOv2 (Phikon-v2 layout)",
            "config": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "patch_size": 8, "image_size": 32, "mlp_ratio": 4, "layerscale_value": 1e-5, "use_swiglu_ffn": False,
                       "layer_norm_eps": 1e-6},
            "embedding": "cls",
            "image_size": 32,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "params": 32384,
            "source": "medtune: a test architecture",
            "licence": "none (random weights)",
        },
    },
}
# parameters a checkpoint may lack: the pooler AutoModel adds to a ViT saved without one (Phikon)
OPTIONAL_WEIGHTS = ("pooler.",)


class TransformersEncoder(VisionEncoder):
    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(getattr(self.trunk.config, "num_register_tokens", 0) or 0)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixel_values=x).last_hidden_state

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(pixel_values=x).pooler_output
        if out is None:
            raise BackboneError(f"{type(self.trunk).__name__} has no pooler: use embedding cls")
        return out


def preset(spec: dict[str, Any]) -> dict[str, Any]:
    """The preset a config entry names by ``model``, or whose hub id its ``arch`` is; {} for none."""
    presets = SPEC["presets"]
    if spec.get("model") is not None:
        return presets[spec["model"]]
    return next((p for p in presets.values() if spec.get("arch") is not None and p.get("hub") == spec["arch"]), {})


def create(spec: dict[str, Any]) -> torch.nn.Module:
    """The preset's architecture with fresh weights (call it under ``torch.device('meta')`` for no memory)."""
    from transformers import AutoConfig, AutoModel

    config = dict(preset(spec)["config"])
    return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


def encoder(spec: dict[str, Any]) -> TransformersEncoder:
    """The preset's model with random weights (under ``torch.device('meta')``: no memory)."""
    return TransformersEncoder(create(spec), spec.get("embedding") or preset(spec).get("embedding", "cls"))


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    """``weights`` (this model's own state dict, e.g. the workflow's fine-tuning) goes on top."""
    found = preset(spec)
    source = spec.get("checkpoint") or spec.get("arch") or found.get("hub")
    if source is not None and Path(source).is_file():  # a weights file: its folder holds the config
        source = Path(source).parent
    trunk = create(spec) if source is None else _pretrained(name, str(source))
    if weights is not None:
        load_strict(trunk, read_weights(weights), f"backbone {name!r}: weights {weights}")
    saved = _preprocessor(source)
    image_size = spec.get("image_size") or saved.get("size") or found.get("image_size") or getattr(trunk.config, "image_size", None)
    mean = spec.get("mean") or saved.get("image_mean") or found.get("mean")
    std = spec.get("std") or saved.get("image_std") or found.get("std")
    if image_size is None or mean is None or std is None:
        raise BackboneError(f"backbone {name!r}: {source} declares no input size or mean/std; set backbones.{name}.image_size, .mean and .std")
    model = TransformersEncoder(trunk, spec.get("embedding") or found.get("embedding", "cls"))
    return Backbone(name, model, None, int(image_size), tuple(mean), tuple(std))


def _pretrained(name: str, source: str) -> torch.nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its own report of missing weights is a warning; ours is an error
    try:
        trunk, info = AutoModel.from_pretrained(source, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(OPTIONAL_WEIGHTS)]
    problems = [f"{len(v)} {kind} (e.g. {sorted(v)[0]})" for kind, v in
                (("missing", missing), ("unexpected", info.get("unexpected_keys", ())), ("of another shape", info.get("mismatched_keys", ()))) if v]
    if problems:
        raise BackboneError(f"backbone {name!r}: checkpoint {source} does not fit its config: keys {'; '.join(problems)}")
    return trunk


def _preprocessor(source: str | None) -> dict[str, Any]:
    """Input size and statistics the folder's preprocessor_config.json declares (an image processor's)."""
    file = Path(source) / "preprocessor_config.json" if source is not None else None
    if file is None or not file.is_file():
        return {}
    saved = json.loads(file.read_text())
    size = saved.get("crop_size") or saved.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return {"size": size, "image_mean": saved.get("image_mean"), "image_std": saved.get("image_std")}
