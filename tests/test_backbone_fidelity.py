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
