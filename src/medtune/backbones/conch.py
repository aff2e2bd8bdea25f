"""The conch family: CONCH v1 (mahmoodlab), a CoCa-style vision-language model with its own tokenizer.

    {family: conch, checkpoint: weights/conch/pytorch_model.bin,
     tokenizer: weights/conch/conch_byte_level_bpe_uncased.json}
    {family: conch, arch: "hf-hub:MahmoodLab/conch", tokenizer: ...}     # the weights from the hub (gated)

CONCH's package is not on the package index, so the model is built here from open_clip and
timm parts to its published configuration (``conch_ViT-B-16.json``) and checkpoint key names:

- ``visual.trunk``: a timm ViT-B/16 at 448 px (``forward_features``: tokens after the final norm);
- ``visual.attn_pool_contrast`` (1 query, 512-d) -> ``ln_contrast`` -> ``@ proj_contrast``: the
  image embedding; ``visual.attn_pool_caption`` / ``ln_caption`` feed the captioning decoder only,
  but are in the checkpoint, so they are built and loaded too;
- ``text``: open_clip's ``TextTransformer`` with a class token appended (CoCa): 127 token positions
  plus the class token, GELU, pooled at the class token after ``ln_final``, ``@ text_projection``;
- ``logit_scale``; zero-shot logits are ``exp(logit_scale) * img @ txt.T`` on normalised embeddings.

The captioning decoder (``text_decoder.*``) was removed from the released weights; it is not
built, and a checkpoint that has it loads without it. Everything else must match exactly.

The tokenizer is a byte-level BPE file (``conch_byte_level_bpe_uncased.json``) that ships only
inside the conch package (CC-BY-NC-ND): place it beside the checkpoint, name it with
``tokenizer``, or install the conch package. It is read with the ``tokenizers`` library it was
written for, and CONCH's ``tokenize`` rules are applied: special tokens added, truncated and
padded (``<pad>`` = 0) to 127, one ``<pad>`` appended (128); ``encode_text`` drops that last
position and appends the class token.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medtune.models import Backbone, BackboneError, load_strict, read_weights, registered_open_clip

SPEC = {
    "label": "CONCH (CoCa)",
    "text_tower": True,
    "keys": ["model", "arch", "checkpoint", "tokenizer", "kwargs"],
    "required": [],
    "presets": {
        "conch_v1": {
            "label": "CONCH v1",
            # conch/open_clip_custom/model_configs/conch_ViT-B-16.json (mahmoodlab/CONCH@141cc09); the
            # vision tower's ViT-B/16 sizes are CoCaVisionCfg's defaults there (width 768, 12 layers, 12 heads)
            "config": {
                "embed_dim": 512,
                "embed_dim_caption": 768,
                "vision_cfg": {"image_size": 448, "patch_size": 16, "width": 768, "layers": 12, "num_heads": 12, "mlp_ratio": 4,
                               "attn_pooler_heads": 8, "n_queries_contrast": 1, "n_queries_caption": 256},
                "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12},
            },
            "hub": "MahmoodLab/conch",
            "tokenizer": "conch_byte_level_bpe_uncased.json",
            "embedding": "proj_contrast, normalised (encode_image)",
            "image_size": 448,
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "params": 200522497,
            "published": "ViT-B/16 image encoder, 12-layer text encoder (CONCH paper); no count",
            "source": "mahmoodlab/CONCH@141cc09 conch/open_clip_custom (coca_model.py, vision_tower.py, transformer.py, "
                      "model_configs/conch_ViT-B-16.json); the count is everything but the removed decoder",
            "licence": "CC-BY-NC-ND-4.0, gated",
            "transform": "Resize 448 bicubic, CenterCrop 448",
        },
    },
}
PAD_ID, START_OF_TEXT, END_OF_TEXT = 0, "<start_of_text>", "<end_of_text>"
REMOVED_FROM_RELEASE = ("text_decoder.",)  # the captioning decoder's weights (CONCH README)


class ConchVisual(nn.Module):
    def __init__(self, embed_dim: int, embed_dim_caption: int, image_size: int, patch_size: int, width: int,
                 layers: int, num_heads: int, mlp_ratio: float, attn_pooler_heads: int, n_queries_contrast: int,
                 n_queries_caption: int) -> None:
        super().__init__()
        import timm

        from open_clip.transformer import AttentionalPooler, LayerNorm

        self.trunk = timm.models.vision_transformer.VisionTransformer(
            img_size=image_size, patch_size=patch_size, embed_dim=width, depth=layers, num_heads=num_heads,
            mlp_ratio=mlp_ratio, num_classes=0, dynamic_img_size=True)
        self.attn_pool_contrast = AttentionalPooler(embed_dim, width, attn_pooler_heads, n_queries_contrast)
        self.ln_contrast = LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = AttentionalPooler(embed_dim_caption, width, attn_pooler_heads, n_queries_caption)
        self.ln_caption = LayerNorm(embed_dim_caption)

    def forward(self, x: torch.Tensor, project: bool = True) -> torch.Tensor:
        pooled = self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])
        return pooled @ self.proj_contrast if project else pooled


class Conch(nn.Module):
    """CONCH's contrastive towers; its ``encode_image``/``encode_text`` as CONCH's ``CoCa`` computes them."""

    def __init__(self, embed_dim: int, embed_dim_caption: int, vision_cfg: dict[str, Any], text_cfg: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.visual = ConchVisual(embed_dim, embed_dim_caption, **vision_cfg)
        # open_clip counts the appended class token as one more position; CONCH's context (128) includes it
        self.text = TextTransformer(
            context_length=text_cfg["context_length"] - 1, vocab_size=text_cfg["vocab_size"], width=text_cfg["width"],
            heads=text_cfg["heads"], layers=text_cfg["layers"], output_dim=embed_dim, embed_cls=True, pad_id=PAD_ID,
            act_layer=nn.GELU)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.context_length = text_cfg["context_length"]

    def encode_image(self, images: torch.Tensor, normalize: bool = True, proj_contrast: bool = True) -> torch.Tensor:
        latent = self.visual(images, project=proj_contrast)
        return F.normalize(latent, dim=-1) if normalize else latent

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        latent = self.text(tokens[:, :-1])  # the last position makes room for the class token
        return F.normalize(latent, dim=-1) if normalize else latent


class ConchTokenizer:
    """CONCH's ``tokenize``: ``<start_of_text> ... <end_of_text>``, truncated and ``<pad>``-padded to
    ``context_length - 1``, then one ``<pad>`` appended."""

    def __init__(self, path: str | Path, context_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        for token, want in (("<pad>", PAD_ID), (START_OF_TEXT, 1), (END_OF_TEXT, 2)):
            if self.tokenizer.token_to_id(token) != want:
                raise BackboneError(f"{path}: {token} is id {self.tokenizer.token_to_id(token)}, CONCH's is {want}: not CONCH's tokenizer file")
        self.context_length = context_length
        self.tokenizer.enable_truncation(max_length=context_length - 1)
        self.tokenizer.enable_padding(length=context_length - 1, pad_id=PAD_ID, pad_token="<pad>")

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)], dtype=torch.long)
        return F.pad(ids, (0, 1), value=PAD_ID)


def model_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The preset's configuration with the config entry's ``kwargs`` on top (towers merged key by key)."""
    config = copy.deepcopy(SPEC["presets"][spec.get("model", "conch_v1")]["config"])
    for key, value in (spec.get("kwargs") or {}).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def create(spec: dict[str, Any]) -> Conch:
    """CONCH with fresh weights (call it under ``torch.device('meta')`` to see the full size without memory)."""
    registered_open_clip()  # open_clip without the towers it would import for models medtune does not build here
    return Conch(**model_config(spec))


encoder = create  # the backbone's model with random weights: CONCH itself


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    found = SPEC["presets"][spec.get("model", "conch_v1")]
    model = create(spec)
    checkpoint = weights or spec.get("checkpoint")
    if checkpoint is None and str(spec.get("arch", "")).startswith(("hf-hub:", "hf_hub:")):
        from huggingface_hub import hf_hub_download

        checkpoint = hf_hub_download(spec["arch"].split(":", 1)[1], "pytorch_model.bin")
    if checkpoint is not None:
        load_strict(model, _conch_state(read_weights(checkpoint)), f"backbone {name!r}: checkpoint {checkpoint}", ignore=REMOVED_FROM_RELEASE)
    tokenizer = ConchTokenizer(_tokenizer_file(name, spec, found, checkpoint), model.context_length)
    if tokenizer.tokenizer.get_vocab_size() > model.text.vocab_size:
        raise BackboneError(f"backbone {name!r}: the tokenizer has {tokenizer.tokenizer.get_vocab_size()} entries, the text tower {model.text.vocab_size}")
    size = model_config(spec)["vision_cfg"]["image_size"]
    return Backbone(name, model, tokenizer, int(size), tuple(found["mean"]), tuple(found["std"]))


def _conch_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CONCH's read_state_dict: a training checkpoint's ``state_dict``, without DataParallel's ``module.``."""
    state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
    return {k.removeprefix("module."): v for k, v in state.items()}


def _tokenizer_file(name: str, spec: dict[str, Any], found: dict[str, Any], checkpoint) -> Path:
    if spec.get("tokenizer"):
        path = Path(spec["tokenizer"])
        if not path.is_file():
            raise BackboneError(f"backbone {name!r}: tokenizer {path} does not exist")
        return path
    places = [Path(checkpoint).parent / found["tokenizer"]] if checkpoint is not None and Path(checkpoint).is_file() else []
    places += [Path(checkpoint) / found["tokenizer"]] if checkpoint is not None and Path(checkpoint).is_dir() else []
    package = importlib.util.find_spec("conch")
    if package is not None and package.submodule_search_locations:
        places += [Path(p) / "open_clip_custom" / "tokenizers" / found["tokenizer"] for p in package.submodule_search_locations]
    for place in places:
        if place.is_file():
            return place
    raise BackboneError(
        f"backbone {name!r}: CONCH's tokenizer {found['tokenizer']} not found (it ships in the conch package, "
        f"github.com/mahmoodlab/CONCH conch/open_clip_custom/tokenizers/); place it beside the checkpoint or set backbones.{name}.tokenizer"
    )
