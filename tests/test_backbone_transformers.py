"""The transformers family: Phikon and Phikon-v2's tiny variants, their folders written here in the
published layout (config.json, model.safetensors with the published key names, preprocessor_config.json),
loaded through the config a user writes; the embedding against the model card's rule
``model(x).last_hidden_state[:, 0, :]`` computed on the reference model."""

import json

import pytest
import torch

from medtune.models import BackboneError, load_backbone

pytestmark = pytest.mark.usefixtures("no_network")

TINY = {
    "phikon": ("vit", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
                           image_size=32, layer_norm_eps=1e-12, qkv_bias=True)),
    "phikon-v2": ("dinov2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
                                 mlp_ratio=4, layerscale_value=1e-5, use_swiglu_ffn=False, layer_norm_eps=1e-6)),
}
PROCESSOR = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"height": 32, "width": 32}}


def reference_model(model, seed=0, **extra):
    from transformers import AutoConfig, AutoModel

    kind, config = TINY[model]
    torch.manual_seed(seed)
    built = AutoModel.from_config(AutoConfig.for_model(kind, **config), **extra).eval()
    for p in built.parameters():  # LayerScale and LayerNorm start at constants: make every weight count
        torch.nn.init.normal_(p, std=0.2)
    return built


def write_folder(folder, reference):
    """save_pretrained writes the published key names (transformers maps its own back on saving)."""
    reference.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return folder


@pytest.mark.parametrize("model", sorted(TINY))
def test_each_published_model_loads_its_folder_and_embeds_as_its_card_does(tmp_path, model):
    reference = reference_model(model, seed=1)
    folder = write_folder(tmp_path / model, reference)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the published layout, not transformers 5's names
        assert "encoder.layer.0.attention.attention.query.weight" in set(f.keys())
    backbone = load_backbone(model, {"family": "transformers", "model": model, "checkpoint": str(folder)})
    assert not backbone.text_tower and (backbone.image_size, backbone.mean) == (32, (0.485, 0.456, 0.406))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = backbone.model.encode_image(x), reference(pixel_values=x).last_hidden_state[:, 0, :]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_phikon_saved_without_a_pooler_loads_and_the_weights_file_names_its_folder(tmp_path):
    """TRIDENT builds Phikon as ViTModel(add_pooling_layer=False); AutoModel adds a pooler the checkpoint lacks."""
    reference = reference_model("phikon", seed=2, add_pooling_layer=False)
    folder = write_folder(tmp_path / "phikon", reference)
    backbone = load_backbone("p", {"family": "transformers", "model": "phikon", "checkpoint": str(folder / "model.safetensors")})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_image(x), reference(pixel_values=x).last_hidden_state[:, 0], rtol=0, atol=0)


def test_a_folder_with_weights_missing_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_folder(tmp_path / "v2", reference_model("phikon-v2"))
    state = load_file(str(folder / "model.safetensors"))
    del state["encoder.layer.1.mlp.fc2.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BackboneError) as err:
        load_backbone("v2", {"family": "transformers", "checkpoint": str(folder)})
    assert "\n" not in str(err.value) and "1 missing" in str(err.value) and "'v2'" in str(err.value)


def test_the_tiny_test_backbone_needs_no_weights():
    a = load_backbone("a", {"family": "transformers", "model": "medtune-tiny-dinov2", "init_seed": 4})
    b = load_backbone("b", {"family": "transformers", "model": "medtune-tiny-dinov2", "init_seed": 4})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert a.model.encode_image(x).shape == (2, 32)
        assert torch.equal(a.model.encode_image(x), b.model.encode_image(x))
