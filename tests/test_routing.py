"""Capability routing: a method runs only on the backbones that have what it requires; the rest are
said once at DAG build and shown as "—" in the tables, and nothing crashes."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SMALL_CONFIG, job_counts, snakemake
from medtune import methods as method_registry
from medtune import plan
from test_adapt import _write_cache

DEFAULT = yaml.safe_load(open(plan.SCHEMA_PATH.parents[1] / "config.yaml"))
VISION = {"family": "timm", "model": "medtune-tiny-vit"}


def _with_vision_backbone(study="clipath"):
    config = copy.deepcopy(DEFAULT)
    config["backbones"]["vit"] = dict(VISION)
    config["studies"][study]["backbones"].append("vit")
    return plan.validate(config)


def test_every_built_in_method_says_what_it_requires():
    # read off each method's code: the class-prompt features or the text encoder, or image features alone
    # ... and an open_clip CLIP's own towers: CoOp's token embeddings, CLIP-LoRA's packed attention,
    # fine-tuning's model(images, tokens)
    # LP++ (F Tᵀ) and CLAP (its text prototypes) read class text; TransCLIP refines a base's predictions, LP-FT
    # and the soups train and average an open_clip model's state dict
    text = {"zeroshot", "rfc", "clip_adapter", "tip_adapter", "tip_adapter_f", "lp_plus_plus", "clap"}
    registered = method_registry.registered()
    assert {n: m.requires for n, m in registered.items()} == {
        **{n: ("text_tower",) for n in text}, **{n: () for n in ("linear_probe", "knn", "simpleshot", "transclip")},
        **{n: ("open_clip_towers",) for n in ("lp_ft", "soup")},
        **{n: ("text_tower", "open_clip_towers") for n in ("coop", "clip_lora", "finetune")},
    }


@pytest.mark.parametrize("spec, expected", [
    ('{"training": "frozen"}', "SPEC requires must be a list of ['text_tower', 'open_clip_towers']"),
    ('{"training": "frozen", "requires": ["gpu"]}', "not ['gpu']"),
    ('{"training": "frozen", "requires": [], "needs_text_encoder": True}', "needs_text_encoder is true, so requires must name 'text_tower'"),
    ('{"training": "frozen", "requires": [], "default": {}}', "unknown SPEC key 'default'; expected ['defaults', 'label'"),
])
def test_a_method_that_does_not_say_what_it_requires_is_refused(tmp_path, spec, expected):
    module = tmp_path / "mine.py"
    module.write_text(f"SPEC = {spec}\n")
    config = copy.deepcopy(DEFAULT)
    config["method_modules"] = [str(module)]
    with pytest.raises(plan.ConfigError) as err:
        plan.validate(config)
    message = str(err.value)
    assert "\n" not in message and "method_modules" in message and str(module) in message and expected in message


def test_the_plan_runs_a_method_only_where_the_backbone_has_what_it_requires():
    config = _with_vision_backbone()
    on_vision = {r.method for r in plan.runs(config) if r.backbone == "vit"}
    # zero-shot too: its run measures the embedding (no classifier without a text tower)
    assert on_vision == {"zeroshot", "linear_probe", "knn", "simpleshot", "linear_probe_aug_medmnistc"}
    on_text = {r.method for r in plan.runs(config) if r.backbone == "tiny-path"}
    assert on_text >= set(config["studies"]["clipath"]["methods"])
    # rfc_augmented (PathCLIP's suite) does not run on it, so its train split needs no PathCLIP-augmented features
    assert plan.train_conditions(config, "synthetic", "vit") == ["clean", "augmented-medmnistc"]
    assert plan.train_conditions(config, "synthetic", "tiny-path") == ["clean", "augmented", "augmented-medmnistc"]
    skipped = {s["method"]: s for s in config["studies"]["clipath"]["skipped"]}
    assert set(skipped) == {"zeroshot", "rfc", "coop", "rfc_augmented"} and skipped["zeroshot"]["embedding_only"]
    assert skipped["coop"]["reason"] == "coop requires a text tower and an open_clip CLIP's towers, which vit (timm vision encoder) lacks"
    assert skipped["coop"]["missing"] == ["text_tower", "open_clip_towers"] and skipped["rfc"]["missing"] == ["text_tower"]


def test_a_text_tower_that_is_not_open_clip_gets_the_methods_that_read_class_text_alone():
    """CONCH encodes text, but CoOp, CLIP-LoRA and fine-tuning reach into an open_clip CLIP's towers."""
    config = copy.deepcopy(DEFAULT)
    config["backbones"]["conch"] = {"family": "conch"}
    for study in ("clipath", "pubmedvision"):
        config["studies"][study]["backbones"].append("conch")
    config = plan.validate(config)
    on_conch = {r.method for r in plan.runs(config) if r.backbone == "conch"}
    assert on_conch == {"zeroshot", "linear_probe", "knn", "simpleshot", "rfc", "rfc_augmented", "linear_probe_aug_medmnistc"}
    lines = [line for line in plan.skip_messages(config) if " on conch " in line]
    assert lines == [
        "skipped coop on conch (study clipath): coop requires an open_clip CLIP's towers, which conch (CONCH (CoCa)) lacks",
        "skipped finetune_caption on conch (study pubmedvision): finetune_caption requires an open_clip CLIP's towers, which conch "
        "(CONCH (CoCa)) lacks",
        "skipped finetune_label on conch (study pubmedvision): finetune_label requires an open_clip CLIP's towers, which conch "
        "(CONCH (CoCa)) lacks",
        "skipped clip_lora on conch (study pubmedvision): clip_lora requires an open_clip CLIP's towers, which conch (CONCH (CoCa)) lacks",
    ]


def test_each_left_out_pair_is_said_once_naming_every_study_that_lists_it():
    config = copy.deepcopy(DEFAULT)
    config["backbones"]["vit"] = dict(VISION)
    for study in ("clipath", "pathclip"):
        config["studies"][study]["backbones"].append("vit")
    lines = [line for line in plan.skip_messages(plan.validate(config)) if " on vit " in line]
    assert lines == [
        "no zeroshot classification on vit (studies clipath, pathclip): zeroshot requires a text tower, which vit "
        "(timm vision encoder) lacks; its embedding's retrieval (HA@K) and invariance still run",
        "skipped rfc on vit (study clipath): rfc requires a text tower, which vit (timm vision encoder) lacks",
        "skipped coop on vit (study clipath): coop requires a text tower and an open_clip CLIP's towers, which vit (timm vision encoder) lacks",
        "skipped rfc_augmented on vit (study clipath): rfc_augmented requires a text tower, which vit (timm vision encoder) lacks",
    ]
    # the default's own vision-only backbone, in the PathCLIP study
    assert plan.skip_messages(plan.validate(copy.deepcopy(DEFAULT))) == [
        "no zeroshot classification on tiny-vit (study pathclip): zeroshot requires a text tower, which tiny-vit "
        "(timm vision encoder) lacks; its embedding's retrieval (HA@K) and invariance still run"
    ]


@pytest.mark.parametrize("name", ["linear_probe", "knn", "simpleshot"])
def test_a_method_that_needs_no_text_fits_the_same_without_class_text(name):
    """What it fits from image features alone is the same head with or without the class text
    beside them: it reads the class count, never the prompts."""
    import torch

    from medtune.heads import FitData, fit

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)).astype(np.float32), np.arange(30) % 3
    params = {**method_registry.registered()[name].defaults, "C_range": [0.1, 10.0], "steps_per_decade": 1, "k": 3}
    with_text, _ = fit(name, FitData(x, y, x[:9], y[:9], class_text=np.eye(3, 8, dtype=np.float32), logit_scale=10.0), params, 0)
    alone, _ = fit(name, FitData(x, y, x[:9], y[:9], n_classes=3), params, 0)
    assert with_text.keys() == alone.keys()
    for key, value in with_text.items():
        assert torch.equal(value, alone[key]) if isinstance(value, torch.Tensor) else value == alone[key], key


def test_a_fit_that_knows_no_class_count_says_so():
    from medtune.heads import FitData, fit

    x, y = np.eye(4, 8, dtype=np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="FitData knows no class count: give n_classes"):
        fit("simpleshot", FitData(x, y, x, y), {}, 0)
    assert FitData(x, y, x, y, class_names=["a", "b", "c"]).n_classes == 3


def test_zero_shot_without_a_text_tower_measures_the_embedding_alone(tmp_path):
    """The same test features with and without class text: the retrieval and invariance rows are
    equal (they never read the prompts), the classification rows exist only with text."""
    from medtune.adapt import zeroshot_run

    samples = _write_cache(tmp_path, n_classes=3, splits={"train": 6, "val": 3, "test": 24}, dim=8)
    test = np.load(tmp_path / "test" / "clean.npy")
    np.save(tmp_path / "test" / "blur-2.npy", test + 0.1)  # a "corrupted" copy: invariance below 1
    run = {"dataset": "d", "method": "zeroshot", "backbone": "b", "seed": None, "fraction": None, "shots": None}
    conditions = ["clean", "blur-2"]
    zeroshot_run(run, None, tmp_path / "samples.csv", tmp_path / "test", conditions, tmp_path / "vision")
    zeroshot_run(run, tmp_path / "text.npz", tmp_path / "samples.csv", tmp_path / "test", conditions, tmp_path / "text")
    alone, with_text = pd.read_csv(tmp_path / "vision" / "metrics.csv"), pd.read_csv(tmp_path / "text" / "metrics.csv")
    assert set(alone["metric"]) == {"ha@5", "ha@10", "p@5", "p@10", "cosine_to_clean"}
    assert {"accuracy", "balanced_accuracy", "top1"} <= set(with_text["metric"])
    keys = ["condition", "group", "metric"]
    merged = alone.merge(with_text, on=keys, suffixes=("", "_text"))
    assert len(merged) == len(alone) and (merged["value"] == merged["value_text"]).all()
    # HA@5 worked out here on the clean split: the share of queries whose 5 nearest others all have its class
    feats = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    labels = samples.query("split == 'test'")["label"].to_numpy()
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    hit = (labels[top] == labels[:, None]).all(axis=1).mean()
    row = alone.query("condition == 'clean' and metric == 'ha@5'")["value"].item()
    assert row == pytest.approx(hit)
    manifest = json.loads((tmp_path / "vision" / "runs.json").read_text())["runs"][0]
    assert manifest["files"] == {"head": "head.pt", "metrics": "metrics.csv"}
    assert "predictions" in json.loads((tmp_path / "text" / "runs.json").read_text())["runs"][0]["files"]


def test_the_workflow_routes_a_vision_only_backbone_beside_a_text_one(tmp_path):
    """The DAG of the small config: no text features of the vision-only backbone, no CoOp on it,
    its zero-shot job without class text, and the skips said once each."""
    from conftest import write_config

    write_config(tmp_path, SMALL_CONFIG)  # YAML with sorted keys: the studies in name order
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    lines = [line for line in result.stderr.splitlines() if line.startswith("medtune: ")]
    assert lines == [
        "medtune: no zeroshot classification on tiny-vit (studies leaderboard, medmnistc): zeroshot requires a text tower, "
        "which tiny-vit (timm vision encoder) lacks; its embedding's retrieval (HA@K) and invariance still run",
        "medtune: skipped coop on tiny-vit (study leaderboard): coop requires a text tower and an open_clip CLIP's towers, which tiny-vit "
        "(timm vision encoder) lacks",
    ]
    plan_text = snakemake(tmp_path, "-n").stdout
    assert "results/features/tiny-vit/synth/text.npz" not in plan_text
    assert "trained=coop, backbone=tiny-vit" not in plan_text
    config = plan.validate(copy.deepcopy(SMALL_CONFIG))
    frozen = {(r.method, r.seed) for r in plan.runs(config) if r.backbone == "tiny-vit" and r.seed is not None}
    assert {m for m, _ in frozen} == {"linear_probe", "knn", "simpleshot"}
    assert job_counts(result.stdout)["train_frozen"] == len({(r.method, r.backbone, r.seed) for r in plan.runs(config) if r.seed is not None
                                                              and plan.training_of(config, r.method) == "frozen"})


def test_the_small_run_skipped_each_pair_once_and_shows_it(small_run):
    said = [line for line in (small_run / "snakemake.stderr").read_text().splitlines() if line.startswith("medtune: ")]
    assert len(said) == len(set(said)) == 2
    tables = small_run / "results" / "tables"
    board = pd.read_csv(tables / "leaderboard.csv")
    not_run = board[board["not_run"].notna()]
    assert set(zip(not_run["backbone"], not_run["method"])) == {("tiny-vit", "zeroshot"), ("tiny-vit", "coop")}
    ran = board[board["not_run"].isna()]
    # the vision-only backbone is ranked with the methods it runs, at every data usage
    vision = ran[ran["backbone"] == "tiny-vit"]
    assert set(vision["method"]) == {"linear_probe", "knn", "simpleshot"} and vision["rank"].notna().all()
    assert len(vision) == 3 * 3  # 2-shot, 5 %, 50 %
    md = (tables / "leaderboard.md").read_text()
    shown = [line for line in md.splitlines() if "| tiny-vit " in line and ("CLIP + CoOp" in line or "zero-shot" in line)]
    assert len(shown) == 2 and all(line.count("| —") >= 5 for line in shown)
    assert "— not run: zeroshot requires a text tower, which tiny-vit (timm vision encoder) lacks; coop requires" in md
    # ranks within a data usage: 1 for the best mean, ties sharing one
    for _, group in ran.groupby(["fraction", "shots"]):
        expected = group["mean"].rank(method="min", ascending=False)
        assert (group["rank"] == expected).all()
