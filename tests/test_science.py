"""The science check's parsing, on small fake outputs of a run."""

import numpy as np
import pandas as pd
import pytest

from medtune import science
from medtune.studies.clipath import accuracy_table
from medtune.tables import registered_methods

KEYS = ["dataset", "method", "backbone", "seed", "fraction", "condition", "group", "metric", "value"]


def fake_metrics(top3_of_rfc: float = 1.0) -> pd.DataFrame:
    rows = [("synthetic", "zeroshot", "tiny-path", None, None, "clean", "all", "accuracy", 0.7),
            ("synthetic", "zeroshot", "tiny-path", None, None, "clean", "all", "top3", 1.0),
            ("synthetic", "zeroshot", "tiny-path", None, None, "blur-2", "all", "accuracy", 0.4),
            ("synthetic", "zeroshot", "tiny-generic", None, None, "clean", "all", "accuracy", 0.3),
            ("synthetic", "zeroshot", "tiny-generic", None, None, "clean", "all", "top3", 0.9996),  # shows as 100.0
            ("synthetic", "zeroshot", "tiny-path", None, None, "clean", "colon", "top3", 1.0)]
    for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.81)):
        for fraction in (0.1, 50.0):
            rows.append(("synthetic", "rfc", "tiny-path", seed, fraction, "clean", "all", "accuracy", acc - (0.1 if fraction < 1 else 0)))
            rows.append(("synthetic", "rfc", "tiny-path", seed, fraction, "clean", "all", "top3", top3_of_rfc))
            rows.append(("synthetic", "rfc", "tiny-path", seed, fraction, "clean", "colon", "top3", 1.0))
    return pd.DataFrame(rows, columns=KEYS)


def test_zero_shot_accuracy_is_the_clean_overall_row():
    metrics = fake_metrics()
    assert science.zero_shot_accuracy(metrics, "synthetic", "tiny-path") == 0.7
    assert science.zero_shot_accuracy(metrics, "synthetic", "tiny-untrained") is None
    check = science.check_zero_shot(metrics, "synthetic", "tiny-path")
    assert check.status == "PASS" and "tiny-generic: 30.0%" in check.details[0]


def test_saturation_counts_a_metric_only_when_every_model_shows_100():
    saturated = science.saturated_metrics(fake_metrics(top3_of_rfc=1.0))
    found = set(zip(saturated["metric"], saturated["group"], saturated["condition"]))
    # overall top-3: 1.0, 0.9996 (prints 100.0) and 1.0 for both RFC fractions; per-colon top-3: 1.0 everywhere
    assert found == {("top3", "all", "clean"), ("top3", "colon", "clean")}
    saturated = science.saturated_metrics(fake_metrics(top3_of_rfc=0.99))
    assert set(zip(saturated["metric"], saturated["group"])) == {("top3", "colon")}
    assert science.check_saturation(fake_metrics(top3_of_rfc=0.99)).status == "MISS"


def test_identical_subsets_and_smallest_class(tmp_path):
    folder = tmp_path / "subsets" / "synthetic"
    for seed, small in ((1, [0, 5]), (2, [0, 5, 7])):
        (folder / f"seed{seed}").mkdir(parents=True)
        pd.DataFrame({"index": small, "label": [0, 1, 1][: len(small)]}).to_csv(folder / f"seed{seed}" / "frac0.1.csv", index=False)
        pd.DataFrame({"index": [0, 5, 7], "label": [0, 1, 1]}).to_csv(folder / f"seed{seed}" / "frac0.5.csv", index=False)
        pd.DataFrame({"index": [0, 1, 5, 7], "label": [0, 0, 1, 1]}).to_csv(folder / f"seed{seed}" / "frac10.csv", index=False)
    subsets = science.read_subsets(folder)
    assert science.identical_subsets(subsets) == [(2, "0.1", "0.5")]
    assert science.smallest_class_count(subsets) == ("0.1", 1)
    checks = science.check_subsets(folder)
    assert [c.status for c in checks] == ["MISS", "MISS"]


def test_seed_spread_is_the_standard_deviation_over_seeds_at_the_largest_fraction():
    fraction, spread = science.seed_spread(fake_metrics(), "synthetic", "tiny-path")
    assert fraction == 50.0 and list(spread.index) == ["rfc"]  # zero-shot has no seeds
    assert spread["rfc"] == pytest.approx(np.std([0.80, 0.82, 0.81], ddof=1))
    check = science.check_seed_spread(fake_metrics(), "synthetic", "tiny-path")
    assert check.status == "N/A" and check.details == ("rfc: 1.00 points",)


def test_separated_pairs_count_every_test_made_below_alpha():
    """Rows as clipath_significance.csv has them: per fraction, then one row per pair over all its runs."""
    nan = np.nan
    rows = [  # method, reference, fraction, p_t_holm, p_boot_accuracy_holm, p_wilcoxon_holm
        ("rfc", "zeroshot", 50.0, 0.01, 0.001, nan),  # both tests below 0.05: separated
        ("rfc", "linear_probe", 50.0, 0.01, 0.2, nan),  # the bootstrap is not
        ("linear_probe", "zeroshot", 50.0, nan, 0.01, nan),  # one seed: the bootstrap alone decides
        ("rfc", "zeroshot", 5.0, 0.001, 0.001, nan),  # another fraction: not counted
        ("rfc", "zeroshot", nan, nan, nan, 0.03),
        ("rfc", "linear_probe", nan, nan, nan, 0.5),
        ("linear_probe", "zeroshot", nan, nan, nan, 0.04),
    ]
    table = pd.DataFrame(rows, columns=["method", "reference", "fraction", "p_t_holm", "p_boot_accuracy_holm", "p_wilcoxon_holm"])
    table = table.assign(dataset="synthetic", backbone="tiny-path", shots=nan)
    found = science.separated_pairs(table, "synthetic", "tiny-path")
    assert found == {"fraction": 50.0, "pairs": 3, "separated": 2, "pairs_overall": 3, "separated_overall": 2}
    assert science.check_separated(table, "synthetic", "tiny-path").shown == "2 of 3 at 50 %"
    assert science.separated_pairs(table, "synthetic", "tiny-generic") is None


def test_main_prints_na_without_a_run(tmp_path, capsys):
    assert science.main(["--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.count("N/A") >= 4 and "PASS" not in out and "RFC" not in out


def test_shot_runs_are_models_of_their_own_and_not_the_largest_fraction():
    """A shot run (fraction empty, shots k) is its own model in the saturation count, and the
    seed spread and the headline read the fraction rows only."""
    metrics = fake_metrics(top3_of_rfc=0.99).assign(shots=np.nan)
    shot = [("synthetic", "rfc", "tiny-path", seed, None, "clean", "all", metric, value)
            for seed in (1, 2, 3) for metric, value in (("accuracy", 0.5 + seed / 10), ("top3", 0.9))]
    metrics = pd.concat([metrics, pd.DataFrame(shot, columns=KEYS).assign(shots=16)], ignore_index=True)
    means = science.model_means(metrics)
    assert set(means.loc[means["method"] == "rfc", "shots"]) == {0, 16}
    study = {"datasets": ["synthetic"], "backbones": ["tiny-path"], "methods": ["zeroshot", "rfc"]}
    numbers, _, _ = accuracy_table(metrics, pd.DataFrame(), study, registered_methods())
    assert (numbers["shots"] == 16).any()
    fraction, spread = science.seed_spread(metrics, "synthetic", "tiny-path")
    assert fraction == 50.0 and np.isclose(spread["rfc"], 0.01)
    assert science.headline(numbers, "synthetic", "tiny-path")[-1].startswith("rfc: 0.1 % 71.0")
