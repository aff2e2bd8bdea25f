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
    assert config["methods"]["rfc"]["params"]["alphas"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert config["studies"]["pathclip"]["fractions"] == plan.DEFAULT_FRACTIONS


def test_left_out_top_level_keys_take_the_schemas_defaults():
    config = {k: v for k, v in copy.deepcopy(DEFAULT).items() if k not in plan.TOP_LEVEL_DEFAULTS}
    filled = plan.validate(config)
    assert {k: filled[k] for k in plan.TOP_LEVEL_DEFAULTS} == {
        "device": "auto", "progress": True, "seeds": [1, 2, 3], "model_threads": 2, "model_cores": 1}
    assert "model_threads" in _bad(lambda c: c.update(model_threads=0))
    assert "model_cores" in _bad(lambda c: c.update(model_cores=1.5))


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
    # the vision-only tiny-vit too: its zero-shot run measures its embedding alone
    assert zeroshot == {"tiny-path", "tiny-generic", "tiny-untrained", "tiny-vit"}
    assert plan.fractions_for(config, "synthetic") == ["0.1", "0.5", "1", "5", "10", "50"]


def test_all_conditions_expand_to_the_29_of_the_benchmark():
    config = plan.validate(DEFAULT)
    conditions = config["studies"]["pathclip"]["conditions"]
    assert len(conditions) == 29 and conditions[0] == "clean"
    # the untrained backbone is evaluated by the pathclip and the medmnistc study: under both suites
    medmnistc = config["studies"]["medmnistc"]["conditions"]
    assert len(medmnistc) == 61 and not set(medmnistc) & set(conditions) - {"clean"}
    assert set(plan.conditions_for(config, "synthetic", "tiny-untrained")) == set(conditions) | set(medmnistc)


def _with_conditions(conditions):
    config = copy.deepcopy(DEFAULT)
    config["studies"]["pathclip"]["conditions"] = conditions
    return plan.validate(config)["studies"]["pathclip"]["conditions"]


def test_a_suite_name_expands_to_clean_and_its_conditions():
    pathclip = _with_conditions(["pathclip"])
    medmnistc = _with_conditions(["medmnistc"])
    assert len(pathclip) == 1 + 7 * 4 and len(medmnistc) == 1 + 12 * 5
    assert medmnistc[:3] == ["clean", "pixelate-1", "pixelate-2"] and medmnistc[-1] == "hed_shift-5"
    # all: every suite, clean once, names unique across suites
    assert _with_conditions(["all"]) == pathclip + medmnistc[1:]
    assert len(set(pathclip) & set(medmnistc)) == 1
    # mixed with single conditions: in order, each once
    assert _with_conditions(["blur-2", "medmnistc", "pixelate-3", "markup-1"]) == ["blur-2", *medmnistc, "markup-1"]


def test_an_unknown_condition_or_suite_is_named():
    message = _bad(lambda c: c["studies"]["pathclip"].update(conditions=["medmnist"]))
    assert "studies.pathclip.conditions" in message and "'medmnist'" in message and "pathclip, medmnistc, all" in message
    assert "'pixelate-6'" in _bad(lambda c: c["studies"]["pathclip"].update(conditions=["pixelate-6"]))


def test_train_conditions_take_a_suite():
    config = copy.deepcopy(DEFAULT)
    config["methods"]["rfc_aug_medmnistc"] = {"base": "rfc", "train_conditions": "medmnistc"}
    config["methods"]["linear_probe_aug_all"] = {"base": "linear_probe", "train_conditions": "all"}
    config["studies"]["clipath"]["methods"] += ["rfc_aug_medmnistc", "linear_probe_aug_all"]
    config = plan.validate(config)
    assert config["methods"]["rfc_aug_medmnistc"]["train_conditions"] == "medmnistc"
    # augmented (PathCLIP's suite, its name from before suites) keeps its feature file
    assert plan.train_conditions(config, "synthetic", "tiny-path") == ["clean", "augmented", "augmented-medmnistc", "augmented-all"]
    assert plan.method_labels(config)["rfc_aug_medmnistc"] == {
        "label": "CLIP + RFC (rfc_aug_medmnistc)", "order": config["methods"]["rfc"]["order"] + 0.5, "train_conditions": "medmnistc",
    }
    message = _bad(lambda c: c["methods"].update(rfc_x={"base": "rfc", "train_conditions": "medmnist"}))
    assert "methods.rfc_x.train_conditions" in message and "'medmnist'" in message


def test_the_reference_backbone_is_one_of_the_studys():
    config = copy.deepcopy(DEFAULT)
    config["studies"]["medmnistc"] = {"datasets": ["synthetic"], "backbones": ["tiny-path", "tiny-generic"], "methods": ["zeroshot"]}
    validated = plan.validate(config)["studies"]["medmnistc"]
    assert len(validated["conditions"]) == 61  # the study's own default: its suite
    config["studies"]["medmnistc"]["reference_backbone"] = "tiny-generic"
    assert plan.validate(config)["studies"]["medmnistc"]["reference_backbone"] == "tiny-generic"
    config["studies"]["medmnistc"]["reference_backbone"] = "tiny-untrained"
    with pytest.raises(plan.ConfigError, match="studies.medmnistc.reference_backbone: 'tiny-untrained' is not one of the study's backbones"):
        plan.validate(config)


def test_unknown_condition_named():
    message = _bad(lambda c: c["studies"]["pathclip"].update(conditions=["clean", "blur-9"]))
    assert "studies.pathclip.conditions" in message and "blur-9" in message


def test_a_variant_takes_its_base_then_the_bases_entry_then_its_own_keys():
    config = plan.validate({**DEFAULT, "methods": {**DEFAULT["methods"], "rfc_fast": {"base": "rfc", "epochs": 2}}})
    rfc, variant = config["methods"]["rfc"], config["methods"]["rfc_fast"]
    from medtune.methods.rfc import SPEC

    assert variant["base"] == "rfc" and variant["module"] == "medtune.methods.rfc" and variant["training"] == "frozen"
    assert variant["params"] == {**SPEC["defaults"], **DEFAULT["methods"]["rfc"], "epochs": 2}
    assert rfc["params"]["epochs"] == DEFAULT["methods"]["rfc"]["epochs"]
    assert variant["label"] == "CLIP + RFC (rfc_fast)" and rfc["order"] < variant["order"] < config["methods"]["coop"]["order"]
    augmented = config["methods"]["rfc_augmented"]
    assert augmented["train_conditions"] == "augmented" and augmented["label"] == "CLIP + RFC + corruption aug."
    # rfc_augmented trains with PathCLIP's suite, linear_probe_aug_medmnistc with MedMNIST-C's
    assert plan.train_conditions(config, "synthetic", "tiny-path") == ["clean", "augmented", "augmented-medmnistc"]


def test_a_variant_is_validated_against_its_base_parameters():
    assert "methods.rfc_fast.alphas.0" in _bad(lambda c: c["methods"].update(rfc_fast={"base": "rfc", "alphas": [3]}))
    assert "methods.rfc_fast" in _bad(lambda c: c["methods"].update(rfc_fast={"base": "rfc", "n_ctx": 4}))
    message = _bad(lambda c: c["methods"].update(svm={"C": [1]}))
    assert "methods.svm" in message and "unknown method 'svm'" in message
    assert "methods.x.base" in _bad(lambda c: c["methods"].update(x={"base": "svm"}))


def test_the_registries_declare_every_built_in_method_and_study():
    from medtune import methods, studies

    registered = methods.registered()
    assert {n: m.training for n, m in registered.items()} == {
        "coop": "frozen", "finetune": "backbone", "linear_probe": "frozen", "rfc": "frozen", "zeroshot": "none",
        "knn": "frozen", "simpleshot": "frozen", "clip_adapter": "frozen", "tip_adapter": "frozen", "tip_adapter_f": "frozen",
        "clip_lora": "backbone", "lp_plus_plus": "frozen", "clap": "frozen", "transclip": "transductive", "lp_ft": "backbone",
        "soup": "soup",
    }
    assert registered["coop"].needs_text_encoder and not registered["rfc"].needs_text_encoder
    assert set(studies.registered()) == {
        "clipath", "leaderboard", "medmnistc", "pathclip", "pubmedvision", "adversarial", "centre_shift", "conformal"
    }
    # a module's declaration is its import's own SPEC, read without importing it
    from medtune.methods import linear_probe

    assert registered["linear_probe"].defaults == linear_probe.SPEC["defaults"]


def test_the_registries_read_no_heavy_module():
    """DAG building reads the declarations without torch, pandas or matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys; from medtune import plan, methods, studies; plan.validate(__import__('yaml').safe_load(open(sys.argv[1])));"
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(plan.SCHEMA_PATH.parents[1] / "config.yaml")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tables_and_figures_come_from_the_study_declarations():
    config = plan.validate(DEFAULT)
    assert plan.tables(config) == [
        "clipath_accuracy", "clipath_cost", "adapted_robustness", "clipath_significance", "pubmedvision_topk",
        "pathclip_zeroshot", "pathclip_retrieval", "medmnistc_summary", "embedding_invariance",
        "adversarial_accuracy", "robustness_index", "centre_shift_accuracy", "conformal_coverage",
    ]
    clean_only = copy.deepcopy(DEFAULT)
    clean_only["studies"]["clipath"]["conditions"] = ["clean"]
    assert "adapted_robustness" not in plan.tables(plan.validate(clean_only))
    assert "pubmedvision_groups" in plan.figures(config) and "corruption_gallery" in plan.figures(config)


def test_run_labels_are_what_every_file_of_the_run_carries():
    run = plan.Run("d", "rfc", "b", 2, "0.5")
    assert run.labels() == {"dataset": "d", "method": "rfc", "backbone": "b", "seed": 2, "fraction": 0.5, "shots": None}
    assert run.path == "d/rfc/b/seed2/frac0.5"
    assert plan.Run("d", "zeroshot", "b").labels()["seed"] is None
    few = plan.Run("d", "knn", "b", 1, shots=16)
    assert few.labels() == {"dataset": "d", "method": "knn", "backbone": "b", "seed": 1, "fraction": None, "shots": 16}
    assert few.path == "d/knn/b/seed1/shots16" and few.subset == "shots16"


def test_shots_beside_fractions_make_runs_of_their_own():
    both = copy.deepcopy(DEFAULT)
    both["studies"]["clipath"]["shots"] = [1, 4, 16]
    runs = [r for r in plan.runs(plan.validate(both)) if r.method == "rfc"]
    assert len(runs) == 3 * (6 + 3)  # seeds x (fractions + shot counts)
    assert sorted(r.shots for r in runs if r.seed == 1 and r.shots) == [1, 4, 16]
    assert all((r.fraction is None) == (r.shots is not None) for r in runs)
    assert plan.shots_for(plan.validate(both), "synthetic") == [1, 4, 16]  # what the subsample job writes
    # shots alone: no default fractions
    alone = copy.deepcopy(DEFAULT)
    del alone["studies"]["clipath"]["fractions"]
    alone["studies"]["clipath"]["shots"] = [2]
    del alone["studies"]["conformal"]  # it names RFC at 50 % itself
    config = plan.validate(alone)
    assert config["studies"]["clipath"]["fractions"] == []
    assert {r.subset for r in plan.runs(config) if r.method == "rfc"} == {"shots2"}
    assert plan.shots_for(config, "synthetic") == [2]
    # fractions alone: no shots
    assert plan.validate(DEFAULT)["studies"]["clipath"]["shots"] == []


@pytest.mark.parametrize("shots", [[0], [2, 2], [1.5]])
def test_bad_shots_named(shots):
    assert "studies.clipath.shots" in _bad(lambda c: c["studies"]["clipath"].update(shots=shots))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_hyperparameters_are_refused_naming_the_key(value):
    message = _bad(lambda c: c["methods"]["rfc"].update(lr=value))
    assert message.startswith("config key methods.rfc.lr:") and "not a finite number" in message
    assert "methods.rfc.alphas.1" in _bad(lambda c: c["methods"]["rfc"].update(alphas=[0.5, value]))


def test_rfc_widths_linear_probe_sweep_and_class_balance_are_checked():
    config = plan.validate(DEFAULT)
    assert config["methods"]["rfc"]["params"]["hidden_widths"] == ["d/4", 64, "d/4"]
    assert config["methods"]["linear_probe"]["params"]["C_range"] == [1e-6, 1e6]
    assert "methods.rfc.hidden_widths.1" in _bad(lambda c: c["methods"]["rfc"].update(hidden_widths=["d/4", "64x", 8]))
    assert "methods.rfc.hidden_widths.0" in _bad(lambda c: c["methods"]["rfc"].update(hidden_widths=["d/0"]))
    assert "methods.rfc.hidden_divisors is from an earlier medtune: renamed hidden_widths" in _bad(
        lambda c: c["methods"]["rfc"].update(hidden_divisors=[4, 16, 4]))
    assert "methods.linear_probe.C_range" in _bad(lambda c: c["methods"]["linear_probe"].update(C_range=[1e-6]))
    assert "methods.linear_probe.search" in _bad(lambda c: c["methods"]["linear_probe"].update(search="binary"))
    assert "datasets.synthetic.class_balance" in _bad(lambda c: c["datasets"]["synthetic"].update(class_balance="even"))


ALL_METHODS = yaml.safe_load(open(plan.SCHEMA_PATH.parents[1] / "all-methods.yaml"))


def _merged(base: dict, overlay: dict) -> dict:
    """Snakemake's merge of config files: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def test_the_all_methods_overlay_runs_the_2024_baselines_at_every_usage():
    config = plan.validate(_merged(DEFAULT, ALL_METHODS))
    runs = [r for r in plan.runs(config) if r.dataset == "synthetic" and r.backbone == "tiny-path"]
    study = config["studies"]["clipath"]
    usages = {(r.seed, r.fraction, r.shots) for r in runs if r.method == "linear_probe"}
    assert len(usages) == len(study["seeds"]) * (len(study["fractions"]) + len(study["shots"])) == 33
    for method in ("lp_plus_plus", "clap", "lp_ft", "soup", "soup_uniform", "linear_probe+transclip", "tip_adapter+transclip",
                   "clap+transclip"):
        assert {(r.seed, r.fraction, r.shots) for r in runs if r.method == method} == usages, method
    assert [r for r in runs if r.method == "zeroshot+transclip"] == [plan.Run("synthetic", "zeroshot+transclip", "tiny-path")]
    assert "clipath_shots" in plan.figures(config)


def test_a_stage_builds_on_methods_of_its_study_and_kind():
    def stage(**transclip):
        return lambda c: (c["methods"].update(transclip=transclip), c["studies"]["clipath"]["methods"].append("transclip"))

    assert _bad(stage(methods=["tip_adapter"])) == (
        "config key studies.clipath.methods: transclip builds on tip_adapter, which the study does not run; add it")
    assert "methods.transclip.methods: unknown method 'svm'" in _bad(stage(methods=["svm"]))
    message = _bad(lambda c: (c["methods"].update(transclip={"methods": ["finetune_label"]}),
                              c["studies"]["pubmedvision"]["methods"].append("transclip")))
    assert message == ("config key methods.transclip.methods: 'finetune_label' is a backbone method; a transductive method builds on none "
                       "or frozen methods")
    mixed = _bad(lambda c: (c["methods"].update(soup={"methods": ["finetune_label", "clip_lora"]}),
                            c["studies"]["pubmedvision"]["methods"].append("soup")))
    assert mixed.startswith("config key methods.soup.methods: a soup averages variants of one method")


def test_a_study_leaves_out_the_stage_runs_another_study_makes_on_its_methods():
    config = plan.validate(_merged(DEFAULT, {"methods": {"transclip": {"methods": ["zeroshot"]}},
                                            "studies": {"clipath": {"methods": ["zeroshot", "linear_probe", "transclip"]}}}))
    assert config["studies"]["clipath"]["other_stage_runs"] == []
    # PathCLIP's study runs zero-shot on the same backbone, not TransCLIP: the refined zero-shot run is not its row
    assert config["studies"]["pathclip"]["other_stage_runs"] == ["zeroshot+transclip"]
    import pandas as pd

    from medtune.tables import of_study

    names = pd.Series(["zeroshot", "zeroshot+transclip", "finetune_label+wise0.5"])
    assert of_study(names, config["studies"]["clipath"]).tolist() == [True, True, False]
    assert of_study(names, config["studies"]["pathclip"]).tolist() == [True, False, False]
    assert of_study(names, config["studies"]["pubmedvision"]).tolist() == [True, False, True]
