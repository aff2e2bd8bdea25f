"""The whole DAG on a small synthetic config: tables, incremental re-runs, determinism."""

import copy

import pandas as pd
import yaml

from conftest import SMALL_CONFIG, job_counts, snakemake, write_config


def test_tables_have_the_seed_shapes(small_run):
    tables = small_run / "results" / "tables"
    acc = pd.read_csv(tables / "clipath_accuracy.csv")
    rows = set(zip(acc["method"], acc["fraction"]))
    assert rows == {("zeroshot", 0.0), ("linear_probe", 5.0), ("linear_probe", 50.0), ("rfc", 5.0), ("rfc", 50.0)}
    for metric in ("accuracy", "recall", "precision", "f1", "auc"):
        assert acc[f"{metric}_mean"].between(0, 1).all()
    # two seeds -> a confidence interval for every trained row
    assert acc.loc[acc["method"] != "zeroshot", "accuracy_ci95"].notna().all()

    cost = pd.read_csv(tables / "clipath_cost.csv")
    trained = cost[cost["method"] != "zeroshot"]
    assert (trained["train_seconds_mean"] > 0).all() and (trained["trainable_parameters"] > 0).all()

    topk = pd.read_csv(tables / "pubmedvision_topk.csv")
    assert topk["group"].iloc[0] == "all" and len(topk) == 1 + 3  # overall + three organ groups
    assert {"tiny/zeroshot/top1", "tiny/zeroshot/top3"} <= set(topk.columns)

    zs = pd.read_csv(tables / "pathclip_zeroshot.csv")
    assert zs["condition"].tolist() == ["clean"]
    assert "synth/tiny/accuracy" in zs.columns
    assert (tables / "clipath_accuracy.md").read_text().startswith("### CLIPath")
    assert (small_run / "results" / "figures" / "clipath_accuracy.png").stat().st_size > 10_000


def test_metrics_are_tidy(small_run):
    metrics = pd.read_csv(small_run / "results" / "metrics.csv")
    assert list(metrics.columns) == ["dataset", "method", "backbone", "seed", "fraction", "condition", "group", "metric", "value"]
    trained = metrics[metrics["method"] == "rfc"]
    assert sorted(trained["seed"].unique()) == [1, 2]
    assert not metrics.duplicated(["dataset", "method", "backbone", "seed", "fraction", "condition", "group", "metric"]).any()


def test_rerun_has_nothing_to_do(small_run):
    result = snakemake(small_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_hyperparameter_reruns_only_that_method(small_run):
    config = copy.deepcopy(SMALL_CONFIG)
    config["methods"]["rfc"]["epochs"] = 4
    (small_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        counts = job_counts(snakemake(small_run, "-n").stdout)
    finally:
        write_config(small_run, SMALL_CONFIG)
    assert counts.pop("train_frozen") == 4  # rfc: 2 seeds x 2 fractions; linear probe untouched
    assert set(counts) == {"collect_metrics", "tables", "figures", "all", "total"}


def test_bad_config_stops_with_one_line(tmp_path):
    config = copy.deepcopy(SMALL_CONFIG)
    config["methods"]["rfc"]["alphas"] = [2.0]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "medtune: config key methods.rfc.alphas.0: 2.0 is greater than the maximum of 1" in result.stderr
    assert not (tmp_path / "results").exists()
