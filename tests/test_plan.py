import copy

import pytest
import yaml

from medtune import plan

DEFAULT = yaml.safe_load(open(plan.SCHEMA_PATH.parents[1] / "config.yaml"))


def _bad(mutate):
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(plan.ConfigError) as err:
        plan.validate(config)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_default_config_is_valid_and_gets_defaults():
    config = plan.validate(DEFAULT)
    assert config["methods"]["rfc"]["alphas"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert config["studies"]["pathclip"]["fractions"] == plan.DEFAULT_FRACTIONS


def test_unknown_key_named():
    assert "datasets.synthetic" in _bad(lambda c: c["datasets"]["synthetic"].update(colour="red"))
    assert "'colour' was unexpected" in _bad(lambda c: c["datasets"]["synthetic"].update(colour="red"))


def test_wrong_type_named():
    assert "seeds" in _bad(lambda c: c.update(seeds="1,2"))


def test_fraction_out_of_range_named():
    assert "studies.clipath.fractions.1" in _bad(lambda c: c["studies"]["clipath"].update(fractions=[1, 150]))


def test_empty_seed_list():
    assert "seeds" in _bad(lambda c: c.update(seeds=[]))


def test_unknown_method_named():
    assert "'svm'" in _bad(lambda c: c["studies"]["clipath"]["methods"].append("svm"))


def test_unknown_backbone_reference_named():
    message = _bad(lambda c: c["studies"]["pathclip"]["backbones"].append("vit-huge"))
    assert "studies.pathclip.backbones" in message and "'vit-huge'" in message


def test_unknown_dataset_reference_named():
    message = _bad(lambda c: c["backbones"]["tiny-path"]["pretrain"].update(dataset="nope"))
    assert "backbones.tiny-path.pretrain.dataset" in message


def test_hyperparameter_out_of_range_named():
    assert "methods.rfc.alphas.0" in _bad(lambda c: c["methods"]["rfc"].update(alphas=[1.5]))


def test_runs_cover_every_study_once():
    config = plan.validate(DEFAULT)
    runs = plan.runs(config)
    paths = [r.path for r in runs]
    assert len(paths) == len(set(paths))
    trained = [r for r in runs if r.method == "rfc"]
    assert len(trained) == 3 * 6
    zeroshot = {r.backbone for r in runs if r.method == "zeroshot"}
    assert zeroshot == {"tiny-path", "tiny-generic", "tiny-untrained"}
    assert plan.fractions_for(config, "synthetic") == ["0.1", "0.5", "1", "5", "10", "50"]


def test_all_conditions_expand_to_the_29_of_the_benchmark():
    config = plan.validate(DEFAULT)
    conditions = config["studies"]["pathclip"]["conditions"]
    assert len(conditions) == 29 and conditions[0] == "clean"
    assert plan.conditions_for(config, "synthetic", "tiny-untrained") == conditions


def test_unknown_condition_named():
    message = _bad(lambda c: c["studies"]["pathclip"].update(conditions=["clean", "blur-9"]))
    assert "studies.pathclip.conditions" in message and "blur-9" in message


def test_rfc_widths_linear_probe_sweep_and_class_balance_are_checked():
    config = plan.validate(DEFAULT)
    assert config["methods"]["rfc"]["hidden_widths"] == ["d/4", 64, "d/4"]
    assert config["methods"]["linear_probe"]["C_range"] == [1e-6, 1e6]
    assert "methods.rfc.hidden_widths.1" in _bad(lambda c: c["methods"]["rfc"].update(hidden_widths=["d/4", "64x", 8]))
    assert "methods.rfc.hidden_widths.0" in _bad(lambda c: c["methods"]["rfc"].update(hidden_widths=["d/0"]))
    assert "'hidden_divisors' was unexpected" in _bad(lambda c: c["methods"]["rfc"].update(hidden_divisors=[4, 16, 4]))
    assert "methods.linear_probe.C_range" in _bad(lambda c: c["methods"]["linear_probe"].update(C_range=[1e-6]))
    assert "methods.linear_probe.search" in _bad(lambda c: c["methods"]["linear_probe"].update(search="binary"))
    assert "datasets.synthetic.class_balance" in _bad(lambda c: c["datasets"]["synthetic"].update(class_balance="even"))
