"""The timm family: each published model's tiny variant, its checkpoint written here in the published
layout (an HF repo folder: config.json + pytorch_model.bin or model.safetensors with timm's key names),
loaded through the config a user writes, and its embedding against the rule re-typed from the
public code (TRIDENT's load.py for Virchow/Virchow2: ``cat(output[:, 0], output[:, k:].mean(1))``).
"""

import json

import pytest
import torch
from torch import nn

from conftest import put_in_hub
from medtune.models import BackboneError, load_backbone

pytestmark = pytest.mark.usefixtures("no_network")

# The published create_model calls, re-typed from the public code (mahmoodlab/UNI@42715ef
# get_encoder.py; mahmoodlab/TRIDENT@a91fa84 load.py), each with the index its patch tokens start at
# in that code (TRIDENT hard-codes 1 for Virchow and 5 for Virchow2) and its embedding.
PUBLISHED = {
    "uni": ("vit_large_patch16_224", 16, dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True), None),
    "uni2-h": ("vit_giant_patch14_224", 14, dict(
        img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2,
        num_classes=0, no_embed_class=True, mlp_layer="SwiGLUPacked", act_layer=nn.SiLU, reg_tokens=8, dynamic_img_size=True), None),
    "virchow": ("vit_huge_patch14_224", 14, dict(
        img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
        mlp_layer="SwiGLUPacked", act_layer=nn.SiLU), 1),
    "virchow2": ("vit_huge_patch14_224", 14, dict(
        img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
        mlp_layer="SwiGLUPacked", act_layer=nn.SiLU), 5),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", 14, dict(num_classes=0, img_size=224, global_pool="token", init_values=1e-5, dynamic_img_size=True), None),
    "h-optimus-1": ("vit_giant_patch14_reg4_dinov2", 14, dict(num_classes=0, img_size=224, global_pool="token", init_values=1e-5, dynamic_img_size=True), None),
    "prov-gigapath": ("vit_giant_patch14_dinov2", 16, dict(
        img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334, num_classes=0,
        dynamic_img_size=True), None),
    "kaiko-vits16": ("vit_small_patch16_224", 16, dict(dynamic_img_size=True, num_classes=0), None),
    "kaiko-vitb16": ("vit_base_patch16_224", 16, dict(dynamic_img_size=True, num_classes=0), None),
}
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def tiny_size(patch):
    return {**TINY, "img_size": 2 * patch}


def reference_model(model, seed=0):
    """The published architecture at tiny size, built by timm directly, with seeded random weights."""
    import timm

    arch, patch, kwargs, _ = PUBLISHED[model]
    kwargs = {k: (timm.layers.SwiGLUPacked if v == "SwiGLUPacked" else v) for k, v in kwargs.items()}
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **{**kwargs, **tiny_size(patch)}).eval()


def reference_embedding(model, reference, x):
    """What the public code makes of the model's output: model(x) is the CLS vector, or for Virchow
    the token sequence from which TRIDENT takes cat(CLS, mean of patch tokens from its fixed index)."""
    start = PUBLISHED[model][3]
    out = reference(x)
    return out if start is None else torch.cat([out[:, 0], out[:, start:].mean(1)], dim=-1)


def write_hf_repo(folder, model, reference, weights="pytorch_model.bin"):
    """The layout of the model's Hugging Face repo: timm's config.json and the weights file."""
    arch, patch, kwargs, _ = PUBLISHED[model]
    folder.mkdir(parents=True, exist_ok=True)
    model_args = {k: v for k, v in {**kwargs, **tiny_size(patch)}.items() if isinstance(v, (int, float, str, bool))}
    config = {"architecture": arch, "num_classes": 0, "model_args": model_args,
              "pretrained_cfg": {"tag": "test", "input_size": [3, 2 * patch, 2 * patch], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "num_classes": 0}}
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    return folder


def user_spec(model, checkpoint, **extra):
    """The config entry a user writes for the published model, shrunk to the tiny size."""
    patch = PUBLISHED[model][1]
    return {"family": "timm", "model": model, "checkpoint": str(checkpoint), "kwargs": tiny_size(patch), "image_size": 2 * patch, **extra}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_each_published_model_loads_its_checkpoint_and_embeds_as_its_code_does(tmp_path, model):
    reference = reference_model(model, seed=1)
    weights = "model.safetensors" if model.startswith("h-optimus") else "pytorch_model.bin"
    folder = write_hf_repo(tmp_path / model, model, reference, weights)
    backbone = load_backbone(model, user_spec(model, folder))
    assert backbone.tokenizer is None and not backbone.text_tower
    x = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = backbone.model.encode_image(x), reference_embedding(model, reference, x)
    assert ours.shape == theirs.shape == (3, 64 if PUBLISHED[model][3] else 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_the_preset_carries_mean_std_and_input_size(tmp_path):
    folder = write_hf_repo(tmp_path / "ho", "h-optimus-0", reference_model("h-optimus-0"))
    backbone = load_backbone("ho", {"family": "timm", "model": "h-optimus-0", "kwargs": tiny_size(14), "checkpoint": str(folder)})
    assert (backbone.image_size, backbone.mean, backbone.std) == (224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def test_a_weights_file_path_loads_as_well_as_its_folder(tmp_path):
    reference = reference_model("virchow2", seed=2)
    folder = write_hf_repo(tmp_path / "v2", "virchow2", reference)
    a = load_backbone("a", user_spec("virchow2", folder))
    b = load_backbone("b", user_spec("virchow2", folder / "pytorch_model.bin"))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(a.model.encode_image(x), b.model.encode_image(x))


def test_the_hub_id_of_a_preset_takes_its_kwargs_from_the_cache(offline_hub):
    """``arch: hf-hub:MahmoodLab/UNI2-h`` needs the preset's SwiGLUPacked and SiLU, which config.json cannot carry."""
    reference = reference_model("uni2-h", seed=3)
    put_in_hub(offline_hub, "MahmoodLab/UNI2-h", {"x": lambda p: write_hf_repo(p.parent, "uni2-h", reference, "model.safetensors")})
    for spec in ({"arch": "hf-hub:MahmoodLab/UNI2-h"}, {"model": "uni2-h"}):
        backbone = load_backbone("uni2", {"family": "timm", **spec, "kwargs": tiny_size(14), "image_size": 28})
        x = torch.randn(2, 3, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(backbone.model.encode_image(x), reference(x), rtol=0, atol=0)
        assert isinstance(backbone.model.trunk.blocks[0].mlp.act, nn.SiLU)


def test_the_hub_id_not_in_the_cache_is_one_line(offline_hub):
    with pytest.raises(BackboneError, match="'uni2'") as err:
        load_backbone("uni2", {"family": "timm", "model": "uni2-h", "kwargs": tiny_size(14)})
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_model_says_which_keys_do_not_fit(tmp_path):
    folder = write_hf_repo(tmp_path / "uni", "uni", reference_model("uni"))
    with pytest.raises(BackboneError) as err:
        load_backbone("v2", user_spec("virchow2", folder))
    message = str(err.value)
    assert "\n" not in message and "'v2'" in message and "missing (e.g. reg_token)" in message


def test_a_bare_architecture_is_random_but_the_same_for_the_same_seed():
    spec = {"family": "timm", "arch": "vit_small_patch16_224", "kwargs": {**tiny_size(16)}, "mean": [0.5] * 3, "std": [0.5] * 3}
    a, b = load_backbone("a", {**spec, "init_seed": 1}), load_backbone("b", {**spec, "init_seed": 1})
    c = load_backbone("c", {**spec, "init_seed": 2})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.model.encode_image(x), b.model.encode_image(x))
        assert not torch.equal(a.model.encode_image(x), c.model.encode_image(x))


def test_an_unknown_layer_name_is_one_line():
    with pytest.raises(BackboneError, match=r"kwargs.mlp_layer: 'SwiGLUPackd'"):
        load_backbone("x", {"family": "timm", "arch": "vit_small_patch16_224", "kwargs": {**tiny_size(16), "mlp_layer": "SwiGLUPackd"}})


def test_the_tiny_test_backbone_runs_on_its_own():
    backbone = load_backbone("tiny-vit", {"family": "timm", "model": "medtune-tiny-vit"})
    assert backbone.model.num_prefix_tokens == 5
    with torch.no_grad():
        assert backbone.model.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_the_encode_job_writes_a_vision_only_backbones_features(tmp_path, capsys):
    """What the workflow's encode_images rule runs, on Virchow2's tiny variant loaded from its HF folder:
    the job states its memory estimate, and each condition's rows are the normalised embeddings of the
    resized images under that condition, as the public embedding rule gives them."""
    import numpy as np
    import pandas as pd
    import torch.nn.functional as F

    from medtune.corrupt import apply
    from medtune.data.store import write_dataset
    from medtune.encode import encode_split
    from medtune.preprocess import normalize, resize_crop

    reference = reference_model("virchow2", seed=5)
    folder = write_hf_repo(tmp_path / "virchow2", "virchow2", reference)
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    samples = pd.DataFrame({"index": range(6), "split": ["test"] * 6, "label": [0, 1] * 3, "label_name": ["a", "b"] * 3,
                            "caption": [""] * 6, "group": [""] * 6})
    write_dataset(images, samples, tmp_path / "ds")
    spec = {**user_spec("virchow2", folder), "encode_batch_size": 4}
    encode_split("virchow2", spec, None, tmp_path / "ds", "test", ["clean", "blur-2"], tmp_path / "features", device="cpu", progress=False)
    assert "medtune: estimated peak memory of backbone virchow2 at batch size 4 (encoding, fp32)" in capsys.readouterr().out
    x = resize_crop(torch.from_numpy(images).permute(0, 3, 1, 2), 28)
    for condition in ("clean", "blur-2"):
        features = np.load(tmp_path / "features" / f"{condition}.npy")
        xc = apply(x, condition, keys=torch.arange(6)) if condition != "clean" else x
        with torch.no_grad():
            expected = F.normalize(reference_embedding("virchow2", reference, normalize(xc, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))), dim=-1)
        np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)
