"""Backbone loading: local checkpoints, hf-hub ids, HF CLIPModels (PLIP), QuickGELU, and the errors.

Everything here is built from tiny random models on the spot: no weights are
downloaded and the network is switched off.
"""

import json

import pytest
import torch

from conftest import put_in_hub
from medtune import hf_clip
from medtune.backbones.open_clip import resolve_quick_gelu
from medtune.models import OPENAI_MEAN, OPENAI_STD, BackboneError, load_backbone

TINY = {"arch": "medtune-tiny"}
TEXTS = ["an H&E image patch of tumor tissue", "a photo of lymph node"]

# open_clip's name for the tiny HF CLIP below, as ViT-B-32 is for PLIP
HF_TINY_ARCH = "medtune-test-hf-tiny"
HF_TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 24, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}


class NotATensor:
    """Anything torch.load(weights_only=True) must refuse to rebuild."""


pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def hf_tiny_arch(tmp_path_factory):
    import open_clip

    from medtune.models import registered_open_clip

    registered_open_clip()  # register medtune's own configs first; it caches, so this one stays registered too
    path = tmp_path_factory.mktemp("configs") / f"{HF_TINY_ARCH}.json"
    path.write_text(json.dumps(HF_TINY_OPEN_CLIP))
    open_clip.add_model_config(path)
    return HF_TINY_ARCH


def features(backbone, images, tokens):
    with torch.no_grad():
        return backbone.model.encode_image(images), backbone.model.encode_text(tokens)


def random_images(backbone, n=2):
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))


# --- HF CLIPModel (PLIP) ---------------------------------------------------------------


def save_hf_clip(folder, hidden_act="quick_gelu"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act=hidden_act),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=16,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # not the init value, so the test sees it carried over
    model.save_pretrained(folder)
    return model


def hf_features(model, pixels, tokens):
    # transformers 5 returns the projected features as pooler_output, 4.x the tensor itself
    with torch.no_grad():
        image, text = model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=tokens)
    return [out if torch.is_tensor(out) else out.pooler_output for out in (image, text)]


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_hf_clip_gives_the_hf_models_features(tmp_path, hf_tiny_arch, hidden_act):
    hf = save_hf_clip(tmp_path / "plip", hidden_act)
    backbone = load_backbone("plip", {"arch": hf_tiny_arch, "checkpoint": str(tmp_path / "plip"), "family": "hf_clip"})
    assert (backbone.image_size, backbone.mean, backbone.std) == (32, OPENAI_MEAN, OPENAI_STD)
    tokens = backbone.tokenizer(TEXTS)
    assert tokens.shape == (2, 77)
    pixels = random_images(backbone)
    ours, theirs = features(backbone, pixels, tokens), hf_features(hf, pixels, tokens)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert backbone.logit_scale == pytest.approx(float(torch.tensor(3.0).exp()))


def test_hf_clip_from_a_pytorch_bin_and_its_processor_statistics(tmp_path, hf_tiny_arch):
    hf = save_hf_clip(tmp_path / "plip")
    (tmp_path / "plip" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "plip" / "pytorch_model.bin")
    (tmp_path / "plip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.2] * 3}))
    spec = {"arch": hf_tiny_arch, "checkpoint": str(tmp_path / "plip" / "pytorch_model.bin"), "family": "hf_clip"}
    backbone = load_backbone("plip", spec)
    assert (backbone.mean, backbone.std) == ((0.5,) * 3, (0.2,) * 3)
    tokens, pixels = backbone.tokenizer(TEXTS), random_images(backbone)
    for a, b in zip(features(backbone, pixels, tokens), hf_features(hf, pixels, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_weights_go_on_top_of_an_hf_clip(tmp_path, hf_tiny_arch):
    # what a pretraining rule would pass: an open_clip state dict of the converted model
    save_hf_clip(tmp_path / "plip")
    spec = {"arch": hf_tiny_arch, "checkpoint": str(tmp_path / "plip"), "family": "hf_clip"}
    tuned = load_backbone("plip", spec)
    with torch.no_grad():
        tuned.model.visual.proj.mul_(2.0)
    torch.save(tuned.model.state_dict(), tmp_path / "tuned.pt")
    loaded = load_backbone("plip", spec, weights=tmp_path / "tuned.pt")
    images = random_images(tuned)
    assert torch.equal(features(tuned, images, tuned.tokenizer(TEXTS))[0], features(loaded, images, tuned.tokenizer(TEXTS))[0])


def test_hf_clip_under_the_wrong_architecture_name(tmp_path):
    save_hf_clip(tmp_path / "plip")
    with pytest.raises(BackboneError, match=r"'plip'.*not a ViT-B-32.*embed_dim 16 vs 512.*vision_cfg\.image_size 32 vs 224") as err:
        load_backbone("plip", {"arch": "ViT-B-32", "checkpoint": str(tmp_path / "plip"), "family": "hf_clip"})
    assert "\n" not in str(err.value)


def test_hf_clip_refuses_a_contradicting_quick_gelu(tmp_path, hf_tiny_arch):
    save_hf_clip(tmp_path / "plip")
    spec = {"arch": hf_tiny_arch, "checkpoint": str(tmp_path / "plip"), "family": "hf_clip", "quick_gelu": False}
    with pytest.raises(BackboneError, match="'plip'.*quick_gelu: false contradicts .*hidden_act 'quick_gelu'"):
        load_backbone("plip", spec)


def test_hf_clip_conversion_leaves_nothing_behind(tmp_path):
    save_hf_clip(tmp_path / "plip")
    config, state = hf_clip.read_hf_clip(tmp_path / "plip")
    state["vision_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(hf_clip.HFClipError, match="vision_model.extra.weight"):
        hf_clip.convert_state_dict(state, hf_clip.open_clip_config(config))


def test_hf_clip_needs_the_clip_vocabulary():
    with pytest.raises(hf_clip.HFClipError, match="vocab_size 30522"):
        hf_clip.open_clip_config({"text_config": {"vocab_size": 30522}})


# --- local open_clip checkpoints ---------------------------------------------------------


def test_local_checkpoint_gives_identical_outputs(tmp_path):
    trained = load_backbone("tiny", {**TINY, "init_seed": 7})
    torch.save(trained.model.state_dict(), tmp_path / "tiny.pt")
    loaded = load_backbone("tiny", {**TINY, "checkpoint": str(tmp_path / "tiny.pt")})
    untrained = load_backbone("tiny", TINY)
    images, tokens = random_images(trained), trained.tokenizer(TEXTS)
    for a, b in zip(features(trained, images, tokens), features(loaded, images, tokens)):
        assert torch.equal(a, b)
    assert not torch.equal(features(untrained, images, tokens)[0], features(loaded, images, tokens)[0])


def test_weights_argument_replaces_the_checkpoint(tmp_path):
    trained = load_backbone("tiny", {**TINY, "init_seed": 7})
    torch.save(trained.model.state_dict(), tmp_path / "tiny.pt")
    loaded = load_backbone("tiny", TINY, weights=tmp_path / "tiny.pt")
    images = random_images(trained)
    assert torch.equal(features(trained, images, trained.tokenizer(TEXTS))[0], features(loaded, images, trained.tokenizer(TEXTS))[0])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(BackboneError, match=r"'tiny'.*absent\.pt does not exist"):
        load_backbone("tiny", {**TINY, "checkpoint": str(tmp_path / "absent.pt")})


@pytest.mark.parametrize("text_width, complaint", [(64, "size mismatch for visual"), (32, "width changed")])
def test_checkpoint_of_another_architecture(tmp_path, text_width, complaint):
    import open_clip

    other = open_clip.CLIP(embed_dim=64, vision_cfg={"image_size": 64, "patch_size": 8, "width": 64, "layers": 2},
                           text_cfg={"context_length": 24, "width": text_width, "heads": 2, "layers": 2})
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(BackboneError, match=rf"'tiny' \(medtune-tiny, checkpoint=.*other\.pt\): .*{complaint}") as err:
        load_backbone("tiny", {**TINY, "checkpoint": str(tmp_path / "other.pt")})
    assert "\n" not in str(err.value)


def test_pickle_with_objects_is_refused(tmp_path):
    state = load_backbone("tiny", TINY).model.state_dict()
    torch.save({"state_dict": state, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(BackboneError, match=r"'tiny'.*evil\.pt holds more than tensors.*weights_only=True"):
        load_backbone("tiny", {**TINY, "checkpoint": str(tmp_path / "evil.pt")})


def test_unknown_open_clip_id():
    with pytest.raises(BackboneError, match="'ViT-Q-99'"):
        load_backbone("x", {"arch": "ViT-Q-99"})


# --- hf-hub ids from a local hub cache ---------------------------------------------------


def tiny_hub_repo(cache, repo, model, **model_cfg_overrides):
    from medtune.models import MODEL_CONFIG_DIR

    model_cfg = json.loads((MODEL_CONFIG_DIR / "medtune-tiny.json").read_text()) | model_cfg_overrides
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    put_in_hub(cache, repo, {
        "open_clip_config.json": lambda p: p.write_text(json.dumps(config)),
        "open_clip_pytorch_model.bin": lambda p: torch.save(model.state_dict(), p),
    })


def test_hf_hub_id_from_the_cache(offline_hub):
    trained = load_backbone("tiny", {**TINY, "init_seed": 5})
    tiny_hub_repo(offline_hub, "medtune/tiny-hub", trained.model)
    backbone = load_backbone("hub", {"arch": "hf-hub:medtune/tiny-hub"})
    assert (backbone.mean, backbone.std, backbone.image_size) == ((0.5,) * 3, (0.25,) * 3, 64)
    assert backbone.tokenizer(TEXTS).shape == (2, 24)
    images, tokens = random_images(trained), trained.tokenizer(TEXTS)
    for a, b in zip(features(trained, images, tokens), features(backbone, images, tokens)):
        assert torch.equal(a, b)


def test_hf_hub_id_not_in_the_cache(offline_hub):
    with pytest.raises(BackboneError, match="hf-hub:medtune/absent") as err:
        load_backbone("hub", {"arch": "hf-hub:medtune/absent"})
    assert "\n" not in str(err.value)


def test_hf_hub_quick_gelu_comes_from_the_repo(offline_hub):
    quick = load_backbone("tiny", {**TINY, "quick_gelu": True})
    tiny_hub_repo(offline_hub, "medtune/tiny-quick", quick.model, quick_gelu=True)
    assert resolve_quick_gelu("hub", {"arch": "hf-hub:medtune/tiny-quick"}) is True
    with pytest.raises(BackboneError, match="quick_gelu: false contradicts hf-hub:medtune/tiny-quick"):
        load_backbone("hub", {"arch": "hf-hub:medtune/tiny-quick", "quick_gelu": False})


# --- QuickGELU ------------------------------------------------------------------------


@pytest.mark.parametrize("arch, tag, expected", [
    ("RN50", "openai", True),
    ("ViT-B-16", "openai", True),
    ("ViT-B-16", "laion2b_s34b_b88k", False),
    ("ViT-B-16-quickgelu", None, True),
])
def test_quick_gelu_follows_the_pretrained_tag(arch, tag, expected):
    # open_clip only warns when the model config and the tag disagree; medtune takes the tag's
    assert resolve_quick_gelu("b", {"arch": arch, "pretrained": tag}) is expected


def test_quick_gelu_contradicting_the_tag_is_refused():
    with pytest.raises(BackboneError, match="'clipath'.*quick_gelu: false contradicts pretrained tag 'openai'"):
        load_backbone("clipath", {"arch": "RN50", "pretrained": "openai", "quick_gelu": False})


def test_local_checkpoint_of_an_openai_architecture_must_say(tmp_path):
    (tmp_path / "pathclip-base.pt").write_bytes(b"")  # never read: the check comes first
    spec = {"arch": "ViT-B-16", "checkpoint": str(tmp_path / "pathclip-base.pt")}
    with pytest.raises(BackboneError, match=r"'pathclip'.*set backbones\.pathclip\.quick_gelu: true\|false") as err:
        load_backbone("pathclip", spec)
    assert "\n" not in str(err.value)
    assert resolve_quick_gelu("pathclip", {**spec, "quick_gelu": True}) is True


def test_quick_gelu_mismatch_is_silent_in_the_model_itself(tmp_path):
    # why the checks exist: the wrong activation loads cleanly and changes every feature
    quick = load_backbone("tiny", {**TINY, "quick_gelu": True, "init_seed": 3})
    assert any(type(m).__name__ == "QuickGELU" for m in quick.model.modules())
    torch.save(quick.model.state_dict(), tmp_path / "quick.pt")
    right = load_backbone("tiny", {**TINY, "quick_gelu": True, "checkpoint": str(tmp_path / "quick.pt")})
    wrong = load_backbone("tiny", {**TINY, "checkpoint": str(tmp_path / "quick.pt")})
    images, tokens = random_images(quick), quick.tokenizer(TEXTS)
    assert torch.equal(features(quick, images, tokens)[0], features(right, images, tokens)[0])
    assert not torch.allclose(features(quick, images, tokens)[0], features(wrong, images, tokens)[0])


def test_open_clip_leaves_out_the_towers_a_model_does_not_use():
    """open_clip imports transformers and timm whenever installed; medtune-tiny needs neither, an
    hf-hub id whose config is not at hand may need both, and then gets them."""
    import subprocess
    import sys

    pytest.importorskip("transformers")
    code = """
import sys
from medtune.models import load_backbone, optional_imports, registered_open_clip
load_backbone("tiny", {"arch": "medtune-tiny"})
plain = sorted(m for m in ("transformers", "timm") if m in sys.modules)
registered_open_clip("hf-hub:medtune/not-in-any-cache")
print(plain, "transformers" in sys.modules, sorted(optional_imports("medtune-tiny")),
      sorted(optional_imports("coca_roberta-ViT-B-32")), sorted(optional_imports("ViT-B-16-SigLIP")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] True [] ['transformers'] ['timm', 'transformers']"
