"""The backbone family registry (medtune.backbones): declarations, capabilities and config checks."""

import copy

import yaml

from medtune import backbones, plan
from test_plan import DEFAULT, _bad  # the default config, and a mutation of it that must fail in one line


def test_the_registry_declares_every_family_and_its_text_tower():
    found = backbones.registered()
    assert {name: f.text_tower for name, f in found.items()} == {
        "open_clip": True, "hf_clip": True, "conch": True, "timm": False, "transformers": False, "torchvision": False,
    }
    assert found["timm"].source == "medtune.backbones.timm"
    # CONCH encodes text, but its towers are not open_clip's CLIP: CoOp and CLIP-LoRA cannot reach into them
    assert {name for name, f in found.items() if f.open_clip_towers} == {"open_clip", "hf_clip"}


def test_a_spec_names_its_family_and_open_clip_is_the_default():
    assert backbones.family_of({"arch": "RN50"}).name == "open_clip"
    assert backbones.family_of({"family": "timm", "model": "uni"}).name == "timm"
    assert backbones.has_text_tower({"arch": "RN50"})
    assert backbones.has_text_tower({"family": "conch"})
    assert not backbones.has_text_tower({"family": "timm", "arch": "vit_small_patch16_224"})
    assert not backbones.has_text_tower({"family": "transformers", "checkpoint": "phikon"})


def test_every_key_a_family_takes_is_in_the_schema():
    schema = yaml.safe_load(plan.SCHEMA_PATH.read_text())
    properties = schema["properties"]["backbones"]["additionalProperties"]["properties"]
    for family in backbones.registered().values():
        assert set(family.keys) | set(backbones.COMMON_KEYS) <= set(properties), family.name


def test_the_retired_format_key_says_what_replaced_it():
    message = _bad(lambda c: c["backbones"]["tiny-path"].update(format="hf_clip"))
    assert message == "config key backbones.tiny-path.format: replaced by family (format: hf_clip is now family: hf_clip)"


def test_an_unknown_family_is_named():
    message = _bad(lambda c: c["backbones"]["tiny-path"].update(family="keras"))
    assert "backbones.tiny-path.family" in message and "'keras'" in message and "timm" in message


def test_a_key_the_family_does_not_use_is_refused():
    message = _bad(lambda c: c["backbones"].update(uni={"family": "timm", "arch": "vit_large_patch16_224", "quick_gelu": True}))
    assert message.startswith("config key backbones.uni.quick_gelu: family 'timm' does not use it")


def test_a_family_says_which_key_it_requires():
    message = _bad(lambda c: c["backbones"].update(uni={"family": "timm", "checkpoint": "uni.bin"}))
    assert message == "config key backbones.uni.model is required for family 'timm' (or arch)"
    message = _bad(lambda c: c["backbones"].update(plip={"family": "hf_clip", "arch": "ViT-B-32"}))
    assert message == "config key backbones.plip.checkpoint is required for family 'hf_clip'"
    message = _bad(lambda c: c["backbones"]["tiny-path"].pop("arch"))
    assert message == "config key backbones.tiny-path.arch is required for family 'open_clip'"


def test_the_default_config_validates_with_families():
    config = plan.validate(DEFAULT)
    families = {name: backbones.family_of(spec).name for name, spec in config["backbones"].items()}
    # the tiny CLIPs, and one vision-only encoder that the routing sends to the image-only methods
    assert families == {"tiny-path": "open_clip", "tiny-generic": "open_clip", "tiny-untrained": "open_clip", "tiny-vit": "timm"}
    config = copy.deepcopy(DEFAULT)
    config["backbones"]["tiny-path"]["family"] = "open_clip"
    plan.validate(config)
