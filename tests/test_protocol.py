"""Protocol cards: how each table's numbers were made, beside the table; a prompt change reaches
the cards, and the reruns, of the tables that depend on prompts and no others."""

import copy
import hashlib
import json

import pandas as pd
import pytest
import torch

from conftest import SMALL_CONFIG, job_counts, snakemake, write_config
from medtune import plan, protocol


def test_ids_digest_is_the_documented_shell_recipe():
    # sort -n | sha256sum of one id per line
    assert protocol.ids_digest([3, 10, 1, 2]) == hashlib.sha256(b"1\n2\n3\n10\n").hexdigest()


def test_weights_digest_follows_the_weights_not_the_layout():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    digest = protocol.weights_digest(model)
    assert digest["parameters"] == 4 * 3 + 3 + 3 * 2 + 2
    # the same numbers through a checkpoint, and in a non-contiguous tensor: the same digest
    copy_ = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    copy_.load_state_dict(model.state_dict())
    copy_[0].weight.data = copy_[0].weight.data.t().contiguous().t()
    assert not copy_[0].weight.is_contiguous() and protocol.weights_digest(copy_) == digest
    with torch.no_grad():
        copy_[1].bias[0] += 1e-6
    assert protocol.weights_digest(copy_)["sha256"] != digest["sha256"]


def test_commit_is_unknown_outside_a_checkout(tmp_path):
    assert protocol.commit(tmp_path) == "unknown"


def _cards(templates=None):
    config = copy.deepcopy(SMALL_CONFIG)
    if templates is not None:
        config["datasets"]["synth"]["prompts"] = {"templates": templates}
    return config, protocol.plan_cards(plan.validate(config))


def test_a_prompt_change_reaches_only_the_cards_of_tables_that_depend_on_prompts():
    _, before = _cards()
    _, after = _cards(["an H&E patch of {c}."])
    changed = {name for name in before if before[name] != after[name]}
    # the embedding tables: the backbones' own features, whatever the prompts
    assert set(before) - changed == {"pathclip_retrieval", "embedding_invariance"}
    assert after["clipath_accuracy"]["datasets"]["synth"]["prompts"] == {"templates": ["an H&E patch of {c}."], "classnames": {},
                                                                         "ensembled": False}
    assert "prompts" not in after["pathclip_retrieval"]["datasets"]["synth"]


def test_no_prompts_on_a_card_whose_study_classifies_with_no_text():
    config = copy.deepcopy(SMALL_CONFIG)
    config["studies"]["pathclip"]["backbones"] = ["tiny-vit"]  # zero-shot there measures the embedding alone
    cards = protocol.plan_cards(plan.validate(config))
    assert "prompts" not in cards["pathclip_zeroshot"]["datasets"]["synth"]
    assert "prompts" in cards["clipath_accuracy"]["datasets"]["synth"]


def _planned_jobs(dry_run: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of each job a dry run lists."""
    jobs, rule = [], None
    for line in dry_run.splitlines():
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[5:-1]
            jobs.append((rule, {}))
        elif line.startswith("    wildcards: ") and rule is not None:
            jobs[-1][1].update(item.split("=", 1) for item in line[len("    wildcards: "):].split(", "))
    return jobs


def test_a_prompt_change_reruns_what_uses_prompts_and_nothing_else(small_run):
    """The dry run after one template changes: the text features, zero-shot on the backbones with a
    text tower, the fits that read class text, the fine-tunings and the tables; not the dataset,
    the subsets, the image features, the fits from image features alone, nor the vision-only
    backbone's zero-shot (embedding) run."""
    config = copy.deepcopy(SMALL_CONFIG)
    config["datasets"]["synth"]["prompts"] = {"templates": ["an H&E patch of {c}."]}
    write_config(small_run, config)
    try:
        result = snakemake(small_run, "-n")
    finally:
        write_config(small_run, SMALL_CONFIG)
    counts = job_counts(result.stdout)
    assert not {"prepare_dataset", "subsample", "encode_images", "pretrain_backbone"} & set(counts)
    jobs = _planned_jobs(result.stdout)
    zeroshot = [w for rule, w in jobs if rule == "zeroshot"]
    assert counts["zeroshot"] == len(zeroshot) == 2 and not any(w["backbone"] == "tiny-vit" for w in zeroshot)
    methods = plan.validate(copy.deepcopy(SMALL_CONFIG))["methods"]
    refit = {w["trained"] for rule, w in jobs if rule == "train_frozen"}
    assert refit == {m for m in refit if "text_tower" in methods[m]["requires"]} and "rfc" in refit
    assert not refit & {"linear_probe", "knn", "simpleshot", "linear_probe_aug_medmnistc"}
    assert counts["tables"] == 1 and counts["encode_text"] == 2


def test_every_table_carries_its_card(small_run):
    tables = small_run / "results" / "tables"
    samples = pd.read_csv(small_run / "results" / "data" / "synth" / "samples.csv")
    test_ids = samples.loc[samples["split"] == "test", "index"]
    for name in plan.tables(plan.validate(copy.deepcopy(SMALL_CONFIG))):
        card = json.loads((tables / f"{name}.card.json").read_text())
        md = (tables / f"{name}.md").read_text()
        assert "#### Protocol card" in md and f"{name}.card.json" in md
        assert card["software"]["packages"]["torch"] == torch.__version__.split("+")[0]
        assert card["software"]["commit"] == "unknown" or len(card["software"]["commit"].split("+")[0]) == 40
        assert card["datasets"]["synth"]["test"]["ids_sha256"] == hashlib.sha256("".join(f"{i}\n" for i in sorted(test_ids)).encode()).hexdigest()
        for backbone, entry in card["backbones"].items():
            assert entry["precision"] == "float32" and entry["device"] == "cpu", (name, backbone)
    board = json.loads((tables / "leaderboard.card.json").read_text())
    vit, tiny = board["backbones"]["tiny-vit"], board["backbones"]["tiny"]
    assert (vit["family"], vit["image_size"], vit["mean"]) == ("timm", 32, [0.485, 0.456, 0.406])
    assert tiny["family"] == "open_clip" and tiny["weights"]["sha256"] != vit["weights"]["sha256"]
    from medtune.models import load_backbone

    assert vit["weights"]["parameters"] == sum(p.numel() for p in load_backbone("tiny-vit", SMALL_CONFIG["backbones"]["tiny-vit"]).model.parameters())
    # every training subset by the digest of its image ids, as the subset file lists them
    for subset, digest in board["subsets"]["synth"].items():
        ids = pd.read_csv(small_run / "results" / "subsets" / "synth" / f"{subset}.csv")["index"]
        assert digest == protocol.ids_digest(ids), subset
    assert set(board["subsets"]["synth"]) == {f"seed{s}/{u}" for s in (1, 2) for u in ("frac5", "frac50", "shots2")}
    assert board["skipped"] == [s["reason"] for s in plan.validate(copy.deepcopy(SMALL_CONFIG))["studies"]["leaderboard"]["skipped"]]
    # the weights that encoded the train, val and test splits are one set
    features = small_run / "results" / "features" / "tiny"
    digests = {json.loads((features / "synth" / split / "encode.json").read_text())["weights"]["sha256"] for split in ("train", "val", "test")}
    assert digests == {tiny["weights"]["sha256"]}


@pytest.mark.parametrize("table, shows_prompts", [("clipath_accuracy", True), ("pathclip_retrieval", False)])
def test_the_card_says_the_prompt_set_where_the_numbers_depend_on_it(small_run, table, shows_prompts):
    md = (small_run / "results" / "tables" / f"{table}.md").read_text()
    assert ("prompts “a histopathology image of {c}.” (one template)" in md) == shows_prompts
