"""Fidelity without weights: every listed model's FULL-size architecture, built on the meta device
(no memory, no download), against its published layout.

Parameter counts are checked three ways: the count the preset declares, a count worked out here by
arithmetic from the published configuration (an independent reference: nothing of timm is
used), and, where the authors publish a figure, that figure at the precision they give it. Key
names are checked against the published checkpoint layout (FOUNDATION.md §5's template for the
timm ViTs); SwiGLU shapes, the SiLU activation (a missing ``act_layer`` silently gives a GEGLU),
the number of prefix tokens and the positional-embedding length against the published configs.
"""

import pytest
import torch
from torch import nn

from medtune.backbones import registered

TIMM_PRESETS = registered()["timm"].presets


def vit_parameters(embed, depth, patch, img, mlp_hidden, reg=0, no_embed_class=False, packed=False, layer_scale=True, in_chans=3):
    """A timm VisionTransformer's parameter count by hand: patch embedding, class and register tokens,
    positional embedding (over the prefix tokens too unless no_embed_class), per block two LayerNorms,
    qkv, proj, two LayerScales and the MLP (SwiGLUPacked: fc1 to 2h, fc2 from h), final LayerNorm."""
    patches = (img // patch) ** 2
    total = in_chans * patch * patch * embed + embed + embed + reg * embed
    total += (patches + (0 if no_embed_class else 1 + reg)) * embed
    mlp_out_in = mlp_hidden // 2 if packed else mlp_hidden
    block = 4 * embed + (3 * embed * embed + 3 * embed) + (embed * embed + embed) + (2 * embed if layer_scale else 0)
    block += embed * mlp_hidden + mlp_hidden + mlp_out_in * embed + embed
    return total + depth * block + 2 * embed


# model: (arithmetic from its published config, published figure or None, tolerance, where the figure is from,
#         prefix tokens, pos_embed length, SwiGLU)
TIMM_MODELS = {
    "uni": (vit_parameters(1024, 24, 16, 224, 4096), None, 0, "UNI README: ViT-L/16 (no count)", 1, 197, False),
    "uni2-h": (vit_parameters(1536, 24, 14, 224, int(1536 * 5.33334), reg=8, no_embed_class=True, packed=True),
               None, 0, "UNI README: ViT-h/14-reg8 (no count)", 9, 256, True),
    "virchow": (vit_parameters(1280, 32, 14, 224, int(1280 * 5.3375), packed=True), 632e6, 1e6, "Virchow card: 632M", 1, 257, True),
    "virchow2": (vit_parameters(1280, 32, 14, 224, int(1280 * 5.3375), reg=4, packed=True), 632e6, 1e6, "arXiv 2408.00738: 632M", 5, 261, True),
    "h-optimus-0": (vit_parameters(1536, 40, 14, 224, 8192, reg=4, no_embed_class=True, packed=True), 1.1e9, 0.05e9, "H-optimus-0 card: 1.1B", 5, 256, True),
    "h-optimus-1": (vit_parameters(1536, 40, 14, 224, 8192, reg=4, no_embed_class=True, packed=True), 1.1e9, 0.05e9, "H-optimus-1 card: 1.1B", 5, 256, True),
    "prov-gigapath": (vit_parameters(1536, 40, 16, 224, 8192, packed=True), 1.13e9, 0.005e9, "prov-gigapath: 1.13B", 1, 197, True),
    "kaiko-vits16": (vit_parameters(384, 12, 16, 224, 1536, layer_scale=False), None, 0, "kaiko hubconf: ViT-S/16", 1, 197, False),
    "kaiko-vitb16": (vit_parameters(768, 12, 16, 224, 3072, layer_scale=False), None, 0, "kaiko hubconf: ViT-B/16", 1, 197, False),
}


def timm_template(depth, reg, layer_scale):
    """FOUNDATION.md §5's key template of the published timm checkpoints."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    keys |= {"reg_token"} if reg else set()
    parts = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    for n in range(depth):
        keys |= {f"blocks.{n}.{p}.{kind}" for p in parts for kind in ("weight", "bias")}
        keys |= {f"blocks.{n}.ls{i}.gamma" for i in (1, 2)} if layer_scale else set()
    return keys


def meta_timm(model):
    from medtune.backbones import timm as family

    with torch.device("meta"):
        return family.create({"family": "timm", "model": model})


def test_every_listed_timm_model_is_checked():
    assert set(TIMM_MODELS) == {m for m in TIMM_PRESETS if not m.startswith("medtune-")}


@pytest.mark.parametrize("model", sorted(TIMM_MODELS))
def test_timm_model_at_full_size(model):
    by_hand, published, tolerance, source, prefix, pos_len, swiglu = TIMM_MODELS[model]
    trunk = meta_timm(model)
    count = sum(p.numel() for p in trunk.parameters())
    assert next(trunk.parameters()).device.type == "meta"
    assert count == by_hand == TIMM_PRESETS[model]["params"], source
    if published is not None:
        assert abs(count - published) <= tolerance, source
    depth = len(trunk.blocks)
    reg = trunk.num_reg_tokens
    layer_scale = model not in ("kaiko-vits16", "kaiko-vitb16")
    assert set(trunk.state_dict()) == timm_template(depth, reg, layer_scale)
    assert trunk.num_prefix_tokens == prefix
    assert trunk.pos_embed.shape[1] == pos_len
    mlp = trunk.blocks[0].mlp
    if swiglu:
        assert mlp.fc1.weight.shape[0] == 2 * mlp.fc2.weight.shape[1]
        assert isinstance(mlp.act, nn.SiLU)  # without act_layer the ViT's GELU gives a GEGLU, silently
    else:
        assert mlp.fc1.weight.shape[0] == mlp.fc2.weight.shape[1] and isinstance(mlp.act, nn.GELU)


def test_virchow_mlp_shapes_are_the_published_ones():
    mlp = meta_timm("virchow2").blocks[0].mlp
    assert tuple(mlp.fc1.weight.shape) == (6832, 1280) and tuple(mlp.fc2.weight.shape) == (1280, 3416)


# --- transformers: Phikon (ViTModel) and Phikon-v2 (Dinov2Model) ------------------------------------

TRANSFORMERS_PRESETS = registered()["transformers"].presets


def hf_vit_template(depth, dinov2):
    """The published key names of a ViTModel / Dinov2Model checkpoint (transformers 4.x layout, as on the hub)."""
    keys = {"embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
            "embeddings.patch_embeddings.projection.bias", "layernorm.weight", "layernorm.bias"}
    keys |= {"embeddings.mask_token"} if dinov2 else {"pooler.dense.weight", "pooler.dense.bias"}
    parts = ["attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"]
    parts += ["norm1", "norm2", "mlp.fc1", "mlp.fc2"] if dinov2 else ["layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"]
    for n in range(depth):
        keys |= {f"encoder.layer.{n}.{p}.{kind}" for p in parts for kind in ("weight", "bias")}
        keys |= {f"encoder.layer.{n}.layer_scale{i}.lambda1" for i in (1, 2)} if dinov2 else set()
    return keys


# model: (count from its config by hand, where the config is from, dinov2?)
TRANSFORMERS_MODELS = {
    # FOUNDATION.md: 85,798,656 for the encoder plus 590,592 for the pooler AutoModel adds
    "phikon": (vit_parameters(768, 12, 16, 224, 3072, layer_scale=False) + 768 * 768 + 768, "owkin/phikon config.json", False),
    # DINOv2 adds a mask token to the ViT-L/16 count; the config's image_size (224) is assumed, not read
    "phikon-v2": (vit_parameters(1024, 24, 16, 224, 4096) + 1024, "ViT-L/16 DINOv2 (arXiv 2409.09173)", True),
}


def test_every_listed_transformers_model_is_checked():
    assert set(TRANSFORMERS_MODELS) == {m for m in TRANSFORMERS_PRESETS if not m.startswith("medtune-")}


@pytest.mark.parametrize("model", sorted(TRANSFORMERS_MODELS))
def test_transformers_model_at_full_size(model):
    from transformers.core_model_loading import revert_weight_conversion

    from medtune.backbones import transformers as family

    by_hand, source, dinov2 = TRANSFORMERS_MODELS[model]
    with torch.device("meta"):
        trunk = family.create({"model": model})
    count = sum(p.numel() for p in trunk.parameters())
    assert count == by_hand == TRANSFORMERS_PRESETS[model]["params"], source
    # transformers 5 renames modules in memory and maps them back to the published names on saving
    assert set(revert_weight_conversion(trunk, trunk.state_dict())) == hf_vit_template(trunk.config.num_hidden_layers, dinov2)
    assert trunk.embeddings.position_embeddings.shape[1] == 197


# --- CONCH v1 -----------------------------------------------------------------------------------------


def mha_parameters(d_model, kdim, n_queries):
    """An attentional pooler: queries, nn.MultiheadAttention (separate q/k/v weights when kdim differs), ln_q, ln_k."""
    projections = 3 * d_model * d_model if kdim == d_model else d_model * d_model + 2 * d_model * kdim
    return n_queries * d_model + projections + 3 * d_model + d_model * d_model + d_model + 2 * d_model + 2 * kdim


def conch_template(vision_layers, text_layers):
    """CONCH's checkpoint keys (FOUNDATION.md §4, read in mahmoodlab/CONCH@141cc09), the decoder removed."""
    keys = timm_template(vision_layers, reg=0, layer_scale=False)
    keys = {f"visual.trunk.{k}" for k in keys}
    contrast = ["query", "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.in_proj_bias",
                "attn.out_proj.weight", "attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_k.weight", "ln_k.bias"]
    keys |= {f"visual.attn_pool_contrast.{k}" for k in contrast}
    caption = ["query", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
               "ln_q.weight", "ln_q.bias", "ln_k.weight", "ln_k.bias"]
    keys |= {f"visual.attn_pool_caption.{k}" for k in caption}
    keys |= {"visual.ln_contrast.weight", "visual.ln_contrast.bias", "visual.proj_contrast", "visual.ln_caption.weight", "visual.ln_caption.bias"}
    keys |= {"text.token_embedding.weight", "text.positional_embedding", "text.cls_emb", "text.ln_final.weight", "text.ln_final.bias",
             "text.text_projection", "logit_scale"}
    parts = ["ln_1", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    for n in range(text_layers):
        keys |= {f"text.transformer.resblocks.{n}.{p}.{kind}" for p in parts for kind in ("weight", "bias")}
        keys |= {f"text.transformer.resblocks.{n}.attn.in_proj_{kind}" for kind in ("weight", "bias")}
    return keys


def test_conch_at_full_size():
    """conch_ViT-B-16.json: embed 512 (caption 768), ViT-B/16 at 448 with attentional poolers (8 heads; 1 and
    256 queries), text 12 x 768 with 12 heads, vocabulary 32,007, 128 positions with the class token."""
    from medtune.backbones import conch

    with torch.device("meta"):
        model = conch.create({})
    vision = vit_parameters(768, 12, 16, 448, 3072, layer_scale=False)
    visual = vision + mha_parameters(512, 768, 1) + 2 * 512 + 512 * 512 + mha_parameters(768, 768, 256) + 2 * 768
    block = 4 * 768 + 3 * 768 * 768 + 3 * 768 + 768 * 768 + 768 + 768 * 3072 + 3072 + 3072 * 768 + 768
    text = 32007 * 768 + 128 * 768 + 768 + 12 * block + 2 * 768 + 768 * 512
    # FOUNDATION.md's worked counts: trunk 86,250,240, visual 90,392,832, text 110,129,664, released 200,522,497
    assert (vision, visual, text) == (86250240, 90392832, 110129664)
    assert sum(p.numel() for p in model.visual.trunk.parameters()) == vision
    assert sum(p.numel() for p in model.visual.parameters()) == visual
    assert sum(p.numel() for p in model.text.parameters()) == text
    assert sum(p.numel() for p in model.parameters()) == visual + text + 1 == registered()["conch"].presets["conch_v1"]["params"]
    assert set(model.state_dict()) == conch_template(12, 12)
    assert tuple(model.text.positional_embedding.shape) == (128, 768) and model.visual.trunk.pos_embed.shape[1] == 785
    assert isinstance(model.text.transformer.resblocks[0].mlp.gelu, nn.GELU)
