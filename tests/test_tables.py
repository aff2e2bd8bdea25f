import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medtune.tables import mean_ci, write_study_tables

STUDY = {"datasets": ["d"], "backbones": ["b"], "methods": ["zeroshot", "rfc"], "fractions": [1, 10], "conditions": ["clean"]}


def rows(method, seed, fraction, acc):
    return [("d", method, "b", seed, fraction, "clean", "all", metric, acc) for metric in ("accuracy", "recall", "precision", "f1", "auc")]


@pytest.fixture
def metrics():
    data = rows("zeroshot", np.nan, np.nan, 0.5)
    for seed, (a1, a10) in zip([1, 2, 3], [(0.60, 0.80), (0.62, 0.84), (0.64, 0.82)]):
        data += rows("rfc", seed, 1.0, a1) + rows("rfc", seed, 10.0, a10)
    return pd.DataFrame(data, columns=["dataset", "method", "backbone", "seed", "fraction", "condition", "group", "metric", "value"])


def test_mean_ci_is_the_t_interval():
    mean, half, n = mean_ci(pd.Series([0.60, 0.62, 0.64]))
    assert mean == pytest.approx(0.62) and n == 3
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3))
    assert np.isnan(mean_ci(pd.Series([0.7]))[1])


def test_tables_with_paper_columns_bold_and_latex(metrics, tmp_path):
    paper = {"clipath_accuracy": {"columns": ["dataset", "method", "fraction", "accuracy"], "rows": [["d", "rfc", 1, 0.70], ["d", "zeroshot", 0, 0.55]]}}
    costs = pd.DataFrame(
        [("d", "rfc", "b", s, f, 1.5, "cpu", 100.0, 10, 50, 5) for s in (1, 2, 3) for f in (1.0, 10.0)],
        columns=["dataset", "method", "backbone", "seed", "fraction", "wall_seconds", "device", "peak_memory_mb", "trainable_parameters", "images_seen", "n_train"],
    )
    write_study_tables(metrics, costs, {"clipath": {**STUDY, "paper": paper}}, tmp_path)
    table = pd.read_csv(tmp_path / "clipath_accuracy.csv")
    rfc1 = table[(table["method"] == "rfc") & (table["fraction"] == 1)].iloc[0]
    assert rfc1["accuracy_mean"] == pytest.approx(0.62)
    assert rfc1["accuracy_paper"] == pytest.approx(0.70)
    md = (tmp_path / "clipath_accuracy.md").read_text()
    assert "| **82.0 ± 5.0** |" in md  # best accuracy in bold, mean ± 95 % CI in percent
    assert "-8.0" in md  # Δ accuracy: 62.0 - 70.0
    tex = (tmp_path / "clipath_accuracy.tex").read_text()
    assert "\\toprule" in tex and "\\bfseries" in tex
    assert "10\\%" in tex  # escaped, or LaTeX would read a comment
    cost = (tmp_path / "clipath_cost.md").read_text()
    assert "1.50 s" in cost


def test_significance_table_and_accuracy_markers(metrics, tmp_path):
    write_study_tables(metrics, pd.DataFrame(), {"clipath": STUDY}, tmp_path)
    sig = pd.read_csv(tmp_path / "clipath_significance.csv")
    # one pair (rfc - zeroshot): a row per fraction, and one for the signed-rank test over all 6 (seed, fraction) pairs
    assert len(sig) == 3 and set(sig["reference"]) == {"zeroshot"}
    at10 = sig[sig["fraction"] == 10].iloc[0]
    d10 = np.array([0.80, 0.84, 0.82]) - 0.5
    assert at10["accuracy_diff"] == pytest.approx(0.32)
    p1, p10 = stats.ttest_1samp(np.array([0.60, 0.62, 0.64]) - 0.5, 0).pvalue, stats.ttest_1samp(d10, 0).pvalue
    assert at10["p_t"] == pytest.approx(p10)
    assert at10["p_t_holm"] == pytest.approx(2 * p10)  # the smaller of two p-values, times 2
    whole = sig[sig["fraction"].isna()].iloc[0]
    assert whole["n_pairs"] == 6 and whole["p_wilcoxon"] == pytest.approx(2 / 2**6)
    assert sig["p_boot_accuracy"].isna().all()  # no runs given: no predictions to resample
    md = (tmp_path / "clipath_significance.md").read_text()
    assert "| CLIP + RFC − zero-shot |" in md and "Holm" in md
    # both fractions beat zero-shot after Holm (p1 and 2 x p10 below .05): † beside accuracy, legend under the table
    assert max(p1, 2 * p10) < 0.05
    acc = (tmp_path / "clipath_accuracy.md").read_text()
    assert "| 62.0 ± 5.0 †" in acc and "| **82.0 ± 5.0 †** |" in acc
    assert acc.rstrip().splitlines()[-1].startswith("† better than zero-shot")
    assert pd.read_csv(tmp_path / "clipath_accuracy.csv").query("method == 'rfc'")["beats_zeroshot"].all()


def test_tables_may_ask_only_for_table_inputs(tmp_path):
    from pathlib import Path

    from medtune.registry import RegistryError
    from medtune.studies import _outputs

    assert _outputs({"t": {"function": "f", "inputs": ["runs"]}}, Path("s.py"), "table")["t"].inputs == ("runs",)
    with pytest.raises(RegistryError, match="table 't' asks for unknown input 'images'"):
        _outputs({"t": {"function": "f", "inputs": ["images"]}}, Path("s.py"), "table")


def test_a_single_seed_leaves_the_interval_blank(metrics, tmp_path):
    one_seed = metrics[metrics["seed"].isna() | (metrics["seed"] == 1)]
    write_study_tables(one_seed, pd.DataFrame(), {"clipath": STUDY}, tmp_path)
    table = pd.read_csv(tmp_path / "clipath_accuracy.csv")
    assert table["accuracy_ci95"].isna().all() and table["accuracy_mean"].notna().all()
    assert "±" not in (tmp_path / "clipath_accuracy.md").read_text()
    cost = pd.read_csv(tmp_path / "clipath_cost.csv")
    assert cost["accuracy_ci95"].isna().all()


def test_shot_runs_are_rows_of_their_own(metrics, tmp_path):
    # the rows of three seeds at 16 images per class: no fraction, shots 16
    few = pd.DataFrame(
        [r[:5] + (16,) + r[5:] for s, a in zip([1, 2, 3], [0.70, 0.72, 0.74]) for r in rows("rfc", s, np.nan, a)],
        columns=["dataset", "method", "backbone", "seed", "fraction", "shots", "condition", "group", "metric", "value"],
    )
    both = pd.concat([metrics.assign(shots=np.nan), few], ignore_index=True)
    costs = pd.DataFrame(
        [("d", "rfc", "b", s, f, k, w, "cpu", 1.0, 10, 50, 5) for s in (1, 2, 3) for f, k, w in ((1.0, None, 1.5), (None, 16, 0.25))],
        columns=["dataset", "method", "backbone", "seed", "fraction", "shots", "wall_seconds", "device", "peak_memory_mb", "trainable_parameters", "images_seen", "n_train"],
    )
    write_study_tables(both, costs, {"clipath": STUDY}, tmp_path)
    table = pd.read_csv(tmp_path / "clipath_accuracy.csv")
    assert table[["method", "fraction", "shots"]].values.tolist() == [["zeroshot", 0, 0], ["rfc", 0, 16], ["rfc", 1, 0], ["rfc", 10, 0]]
    assert table.loc[1, "accuracy_mean"] == pytest.approx(0.72)
    assert "| 16-shot " in (tmp_path / "clipath_accuracy.md").read_text()
    cost = pd.read_csv(tmp_path / "clipath_cost.csv").set_index("shots")
    assert cost.loc[16, "train_seconds_mean"] == pytest.approx(0.25) and cost.loc[16, "accuracy_mean"] == pytest.approx(0.72)
    # the shot runs pair per shot count in the significance table, and carry its markers
    sig = pd.read_csv(tmp_path / "clipath_significance.csv")
    at16 = sig[sig["shots"] == 16].iloc[0]
    assert np.isnan(at16["fraction"]) and at16["n_seeds"] == 3 and at16["accuracy_diff"] == pytest.approx(0.22)
    assert at16["p_t"] == pytest.approx(stats.ttest_1samp([0.20, 0.22, 0.24], 0).pvalue)
    whole = sig[sig["fraction"].isna() & sig["shots"].isna()].iloc[0]
    assert whole["n_pairs"] == 9  # 3 seeds x (1 %, 10 %, 16 shots)
    assert "| 16-shot " in (tmp_path / "clipath_significance.md").read_text()
    assert table.loc[1, "beats_zeroshot"] and "| 72.0 ± 5.0 †" in (tmp_path / "clipath_accuracy.md").read_text()


def test_an_undefined_metric_is_a_dash_not_a_crash(metrics, tmp_path):
    """AUC is undefined when a class is missing from the test split (medtune.metrics): NaN in every row."""
    undefined = metrics.assign(value=np.where(metrics["metric"] == "auc", np.nan, metrics["value"]))
    write_study_tables(undefined, pd.DataFrame(), {"clipath": STUDY}, tmp_path)
    table = pd.read_csv(tmp_path / "clipath_accuracy.csv")
    assert table["auc_mean"].isna().all() and table["accuracy_mean"].notna().all()
    md = (tmp_path / "clipath_accuracy.md").read_text()
    header, _, first = md.splitlines()[2:5]
    assert "auc" in header and first.rstrip(" |").endswith("–")
