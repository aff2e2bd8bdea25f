"""The studies of robustness beyond corruptions in the small workflow run: each result checked against
another path to the same number (cached-feature evaluation, the predictions file, the store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, SMALL_CONFIG, job_counts, snakemake
from medtune import plan
from medtune.pgd import attacked_positions
from medtune.records import read_runs


def runs_of(root, method, backbone="tiny"):
    found = read_runs(sorted((root / "results" / "runs" / "synth" / method / backbone).glob("**/runs.json")))
    return [r for r in found if r["fraction"] in (None, 50.0) and r["shots"] is None]


def test_attacks_are_metric_rows_of_their_runs(small_run):
    metrics = pd.read_csv(small_run / "results" / "metrics.csv")
    attacked = metrics[metrics["condition"].str.startswith("pgd-") & (metrics["metric"] == "accuracy")]
    assert set(attacked["condition"]) == {"pgd-thunder-0", "pgd-thunder-0.0015", "pgd-tecoa-0", "pgd-tecoa-1", "pgd-tecoa-4"}
    assert set(zip(attacked["method"], attacked["seed"].fillna(0), attacked["fraction"].fillna(0))) == {("zeroshot", 0, 0), ("linear_probe", 1, 50)}
    # the attack's unperturbed forward (pixels -> normalise -> encoder -> head) scores the attacked images as the
    # cached features do: the predictions file of the same run, at the same draw of 16 test images
    samples = pd.read_csv(small_run / "results" / "data" / "synth" / "samples.csv").query("split == 'test'")
    for run in runs_of(small_run, "linear_probe") + runs_of(small_run, "zeroshot"):
        if run["seed"] not in (None, 1):
            continue
        saved = np.load(run["files"]["predictions"])
        picked = attacked_positions(len(samples), 16, run["seed"] or 0)
        expected = (saved["logits"][picked].argmax(1) == saved["labels"][picked]).mean()
        rows = attacked[(attacked["method"] == run["method"]) & (attacked["condition"] == "pgd-tecoa-0")]
        assert rows["value"].tolist() == [pytest.approx(expected)], run["method"]
    # a stronger attack never helps
    table = pd.read_csv(small_run / "results" / "tables" / "adversarial_accuracy.csv")
    assert (table["tecoa 4/255"] <= table["tecoa 0 (clean)"]).all() and len(table) == 2


def test_robustness_index_of_each_backbone_on_two_centres(small_run):
    table = pd.read_csv(small_run / "results" / "tables" / "robustness_index.csv")
    assert table["backbone"].tolist() == ["tiny", "tiny-untrained"] and set(table["split"]) == {"val"}
    assert table["robustness_index"].between(0, 1).all() and (table["robustness_index_std"] > 0).all()
    record = json.loads((small_run / "results" / "robustness_index" / "synth" / "tiny.json").read_text())
    samples = pd.read_csv(small_run / "results" / "data" / "synth" / "samples.csv")
    val = samples[samples["split"] == "val"]
    assert record["sites"] == sorted(set(val["site"])) == ["A", "B"] and record["n_images"] == len(val)
    assert record["k"][0] == 1 and record["k_opt"] in record["k"]


def test_kept_logits_are_the_evaluations_own(small_run):
    """logits.npz holds what the run's job computed: its clean test logits are predictions.npz's, and the
    zero-shot out-of-centre accuracy (every test image is centre D) is metrics.csv's clean accuracy."""
    metrics = pd.read_csv(small_run / "results" / "metrics.csv")
    for method in ("zeroshot", "linear_probe", "rfc"):
        for run in runs_of(small_run, method):
            logits, predictions = np.load(run["files"]["logits"]), np.load(run["files"]["predictions"])
            clean = list(logits["conditions"]).index("clean")
            np.testing.assert_array_equal(logits["test_logits"][clean], predictions["logits"])
            assert {"clean", "blur-2"} <= set(logits["conditions"])  # the conformal study's, among the run's others
            assert set(logits["test_site"]) == {"D"} and list(logits["train_sites"]) == ["A", "B"]
    shift = pd.read_csv(small_run / "results" / "tables" / "centre_shift_accuracy.csv")
    for backbone in ("tiny", "tiny-untrained"):
        row = shift[shift["backbone"] == backbone].iloc[0]
        clean = metrics.query("method == 'zeroshot' and backbone == @backbone and condition == 'clean' and metric == 'accuracy' and group == 'all'")
        assert row["out_of_centre"] == pytest.approx(clean["value"].item())
        assert (row["in_sites"], row["out_sites"]) == ("A, B", "D")
    # no run outside these studies keeps logits
    assert not any("logits" in r["files"] for r in read_runs(sorted((small_run / "results" / "runs" / "synth" / "knn").glob("**/runs.json"))))


def test_conformal_table_covers_every_run_score_and_condition(small_run):
    table = pd.read_csv(small_run / "results" / "tables" / "conformal_coverage.csv")
    assert set(table["method"]) == {"zeroshot", "linear_probe", "rfc"} and set(table["score"]) == {"lac", "aps"}
    assert set(table["condition"]) == {"validation, held-out half", "clean", "blur-2"}
    assert table["coverage"].between(0, 1).all() and (table["set_size"] >= 0).all()
    np.testing.assert_allclose(table["below_target"], 0.9 - table["coverage"])
    md = (small_run / "results" / "tables" / "conformal_coverage.md").read_text()
    assert "alpha = 0.1" in md


def test_paper_config_runs_all_three_on_pcam_mhist_and_camelyon17(tmp_path):
    """config/paper/robustness.yaml: its DAG without data, and the three studies on its three datasets."""
    path = REPO / "config" / "paper" / "robustness.yaml"
    config = plan.validate(yaml.safe_load(path.read_text()))
    assert {"adversarial", "centre_shift", "conformal"} <= set(config["studies"])
    assert config["datasets"]["camelyon17"]["source"] == "camelyon17"
    (tmp_path / "config.yaml").write_text(path.read_text())
    counts = job_counts(snakemake(tmp_path, "-n", "--quiet", "rules").stdout)
    assert counts["attack"] == sum(len(s) for s in [config["studies"]["adversarial"]["attacks"]]) * len(
        config["studies"]["adversarial"]["methods"]) * len(config["studies"]["adversarial"]["datasets"]) * len(config["studies"]["adversarial"]["backbones"])
    assert counts["robustness_index"] == len(config["studies"]["centre_shift"]["datasets"]) * len(config["studies"]["centre_shift"]["backbones"])


def test_an_attacked_backbone_training_method_is_refused():
    config = json.loads(json.dumps(SMALL_CONFIG))
    config["studies"]["adversarial"]["methods"] = ["zeroshot", "finetune_label"]
    with pytest.raises(plan.ConfigError, match=r"studies\.adversarial\.methods: 'finetune_label' trains its backbone"):
        plan.validate(config)
    config["studies"]["adversarial"]["methods"] = ["zeroshot"]
    config["studies"]["adversarial"]["attacks"] = {"strong": {"epsilons": [8]}}
    with pytest.raises(plan.ConfigError, match=r"studies\.adversarial\.attacks\.strong: step, steps, unit not given"):
        plan.validate(config)
    config["studies"]["adversarial"]["attacks"] = {"tecoa": {"steps": 100}}
    assert plan.validate(config)["studies"]["adversarial"]["attacks"] == {"tecoa": {"epsilons": [1, 4], "step": 1, "steps": 100, "unit": "1/255"}}
