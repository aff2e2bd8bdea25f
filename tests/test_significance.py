"""Paired statistics between methods: Holm, the signed-rank pairing, the bootstrap."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, roc_auc_score

from medtune import significance as sig
from medtune.metrics import classification_metrics, softmax

COLUMNS = ["dataset", "method", "backbone", "seed", "fraction", "condition", "group", "metric", "value"]
STUDY = {"datasets": ["d"], "backbones": ["b"], "methods": ["zeroshot", "linear_probe", "rfc"], "conditions": ["clean"]}
ORDER = {"zeroshot": {"order": 0}, "linear_probe": {"order": 1}, "rfc": {"order": 2}}


def metric_rows(values):
    """values: {(method, seed, fraction): (accuracy, auc)}"""
    rows = []
    for (method, seed, fraction), (acc, auc) in values.items():
        rows += [("d", method, "b", seed, fraction, "clean", "all", "accuracy", acc), ("d", method, "b", seed, fraction, "clean", "all", "auc", auc)]
        rows.append(("d", method, "b", seed, fraction, "blur-2", "all", "accuracy", 0.0))  # other conditions are ignored
    return pd.DataFrame(rows, columns=COLUMNS)


def test_holm_against_a_hand_worked_case():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> running max .02 .03 .06 .06
    assert sig.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is no test: m = 2
    out = sig.holm([0.02, np.nan, 0.04])
    assert out[0] == pytest.approx(0.04) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert sig.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_signed_rank_pairs_seeds_and_fractions_as_scipy_does():
    # rfc - linear_probe over 3 seeds x 2 fractions: +.05 -.01 +.03 | +.02 +.04 -.06
    lp = {(1, 5.0): 0.70, (2, 5.0): 0.72, (3, 5.0): 0.71, (1, 50.0): 0.80, (2, 50.0): 0.81, (3, 50.0): 0.86}
    diff = {(1, 5.0): 0.05, (2, 5.0): -0.01, (3, 5.0): 0.03, (1, 50.0): 0.02, (2, 50.0): 0.04, (3, 50.0): -0.06}
    values = {("zeroshot", np.nan, np.nan): (0.5, 0.5)}
    values |= {("linear_probe", s, f): (a, 0.9) for (s, f), a in lp.items()}
    values |= {("rfc", s, f): (lp[(s, f)] + diff[(s, f)], 0.9) for (s, f) in lp}
    table = sig.compare(metric_rows(values), STUDY, methods=ORDER)
    pair = table[(table["method"] == "rfc") & (table["reference"] == "linear_probe") & table["fraction"].isna()].iloc[0]
    assert pair["n_pairs"] == 6
    # by hand: |d| ranks 1..6; T+ = 5+3+2+4 = 14, T- = 1+6 = 7; P(T <= 7) = 18/64 subsets of {1..6} -> two-sided 36/64
    assert pair["p_wilcoxon"] == pytest.approx(36 / 64)
    rfc = [lp[k] + diff[k] for k in lp]
    assert pair["p_wilcoxon"] == pytest.approx(stats.wilcoxon(rfc, list(lp.values())).pvalue)
    # against zero-shot: every (seed, fraction) of rfc pairs with its one run; all positive, n = 6 -> 2/64
    zs = table[(table["method"] == "rfc") & (table["reference"] == "zeroshot") & table["fraction"].isna()].iloc[0]
    assert zs["p_wilcoxon"] == pytest.approx(2 / 64) == pytest.approx(stats.wilcoxon(np.array(rfc) - 0.5).pvalue)
    # per fraction: the paired t over seeds
    at5 = table[(table["method"] == "rfc") & (table["reference"] == "linear_probe") & (table["fraction"] == 5.0)].iloc[0]
    d5 = np.array([0.05, -0.01, 0.03])
    assert at5["accuracy_diff"] == pytest.approx(d5.mean())
    assert at5["accuracy_diff_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * d5.std(ddof=1) / np.sqrt(3))
    assert at5["p_t"] == pytest.approx(stats.ttest_rel([lp[(s, 5.0)] + diff[(s, 5.0)] for s in (1, 2, 3)], [lp[(s, 5.0)] for s in (1, 2, 3)]).pvalue)
    # Holm within each column: the t-test column has 3 pairs x 2 fractions of tests
    assert table["p_t_holm"].to_numpy() == pytest.approx(sig.holm(table["p_t"]), nan_ok=True)
    assert table["p_t"].notna().sum() == 6 and table["p_wilcoxon"].notna().sum() == 3
    # zero-shot vs zero-shot, or two untrained methods, is never a row; every row has a trained side
    assert set(zip(table["method"], table["reference"])) == {("linear_probe", "zeroshot"), ("rfc", "zeroshot"), ("rfc", "linear_probe")}


def test_weighted_metrics_match_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 80)
    logits = np.round(rng.normal(size=(80, 3)), 1)  # rounded: tied scores
    weights = rng.integers(0, 4, size=(2, 80)).astype(float)
    acc, auc = sig.weighted_metrics(logits, labels, weights)
    # the same float softmax as the metrics: ties among scores must be the same ties for both
    probs = softmax(logits)
    for i, w in enumerate(weights):
        assert acc[i] == pytest.approx(accuracy_score(labels, logits.argmax(1), sample_weight=w))
        assert auc[i] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro", sample_weight=w))
    binary = labels % 2
    two = logits[:, :2]
    _, auc2 = sig.weighted_metrics(two, binary, weights)
    p1 = softmax(two)[:, 1]
    assert auc2[0] == pytest.approx(roc_auc_score(binary, p1, sample_weight=weights[0]))
    # unit weights: the metrics every run reports
    ones_acc, ones_auc = sig.weighted_metrics(logits, labels, np.ones((1, 80)))
    m = classification_metrics(labels, logits)
    assert ones_acc[0] == pytest.approx(m["accuracy"]) and ones_auc[0] == pytest.approx(m["auc"])


def test_resamples_are_n_draws_with_replacement_from_the_seed():
    """The resampling scheme re-typed: per resample, n image indices drawn uniformly from one
    generator of the seed, counted per image."""
    counts = sig.resample_counts(37, 250, 11)  # 250: chunks of 100 and a last one of 50
    rng = np.random.default_rng(11)
    drawn = rng.integers(0, 37, size=(250, 37))
    assert counts.shape == (250, 37) and (counts.sum(axis=1) == 37).all()
    assert np.array_equal(counts, np.stack([np.bincount(row, minlength=37) for row in drawn]))


@pytest.mark.parametrize("n_classes", [2, 5])
def test_resampled_metrics_are_scikit_learns_on_the_drawn_images(n_classes):
    """Each resample's accuracy and AUC are scikit-learn's on the images it drew, repeated as
    often as drawn (no weights): ties in the scores included."""
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 300)
    logits = np.round(rng.normal(size=(300, n_classes)) + np.eye(n_classes)[labels], 1)
    counts = sig.resample_counts(300, 40, 5)
    accuracy, auc = sig.weighted_metrics(logits, labels, counts)
    probs = softmax(logits)
    for r in (0, 17, 39):
        drawn = np.repeat(np.arange(300), counts[r])
        assert accuracy[r] == pytest.approx(accuracy_score(labels[drawn], logits[drawn].argmax(1)), abs=1e-12)
        if n_classes == 2:
            want = roc_auc_score(labels[drawn], probs[drawn, 1])
        else:
            want = roc_auc_score(labels[drawn], probs[drawn], multi_class="ovr", average="macro")
        assert auc[r] == pytest.approx(want, abs=1e-12)


def test_paired_percentile_interval_agrees_with_scipy_bootstrap(tmp_path):
    """The paired percentile interval of an accuracy difference against scipy.stats.bootstrap's
    (its own generator, so the two agree to the resampling noise of 4,000 resamples)."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 500)
    runs = [save_predictions(tmp_path / f"{name}.npz", rng.normal(size=(500, 3)) + strength * np.eye(3)[labels], labels)
            for name, strength in (("a", 1.2), ("b", 0.8))]
    sig.bootstrap_runs.cache_clear()
    boot = sig.bootstrap_runs(tuple(runs), 4000, 0)
    low, high, _ = sig.bootstrap_difference([(boot[runs[0]][0][0], boot[runs[0]][1][0])], [(boot[runs[1]][0][0], boot[runs[1]][1][0])])
    right = [np.load(r)["logits"].argmax(1) == labels for r in runs]
    scipy_ci = stats.bootstrap((right[0].astype(float), right[1].astype(float)), lambda a, b, axis: a.mean(axis) - b.mean(axis),
                               paired=True, method="percentile", n_resamples=4000, random_state=1).confidence_interval
    assert low == pytest.approx(scipy_ci.low, abs=0.006) and high == pytest.approx(scipy_ci.high, abs=0.006)
    assert low < right[0].mean() - right[1].mean() < high


def save_predictions(path, logits, labels):
    np.savez(path, logits=logits, labels=labels, index=np.arange(len(labels)))
    return str(path)


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 150)
    good = rng.normal(size=(150, 2)) + 1.5 * np.eye(2)[labels]
    weak = rng.normal(size=(150, 2)) + 0.3 * np.eye(2)[labels]
    return save_predictions(tmp_path / "good.npz", good, labels), save_predictions(tmp_path / "weak.npz", weak, labels)


def test_bootstrap_is_deterministic_by_seed(two_runs):
    sig.bootstrap_runs.cache_clear()
    first = sig.bootstrap_runs(two_runs, 200, 7)
    sig.bootstrap_runs.cache_clear()  # recomputed, not served from the cache
    again = sig.bootstrap_runs(two_runs, 200, 7)
    sig.bootstrap_runs.cache_clear()
    other = sig.bootstrap_runs(two_runs, 200, 8)
    for path in two_runs:
        assert np.array_equal(first[path][1], again[path][1])
        assert not np.array_equal(first[path][1], other[path][1])
        assert np.array_equal(first[path][0], other[path][0])  # the observed metrics do not depend on the seed
    good, weak = two_runs
    accuracy = lambda boot, path: [(boot[path][0][0], boot[path][1][0])]
    same = sig.bootstrap_difference(accuracy(first, good), accuracy(first, weak))
    assert same == sig.bootstrap_difference(accuracy(again, good), accuracy(again, weak))
    assert same != sig.bootstrap_difference(accuracy(other, good), accuracy(other, weak))


def test_bootstrap_interval_and_p_value(two_runs):
    sig.bootstrap_runs.cache_clear()
    good, weak = two_runs
    boot = sig.bootstrap_runs(two_runs, 400, 0)
    m = {path: classification_metrics(np.load(path)["labels"], np.load(path)["logits"]) for path in two_runs}
    assert boot[good][0] == pytest.approx([m[good]["accuracy"], m[good]["auc"]])  # observed: the run's own metrics
    accuracy = lambda path: [(boot[path][0][0], boot[path][1][0])]
    low, high, p = sig.bootstrap_difference(accuracy(good), accuracy(weak))
    d = boot[good][1][0] - boot[weak][1][0]
    assert (low, high) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])))
    observed = m[good]["accuracy"] - m[weak]["accuracy"]
    assert 0 < low < observed < high and p == pytest.approx(2 * stats.norm.sf(observed / d.std(ddof=1)))
    assert p < 1e-4  # far below the 1/401 a count of resamples could reach
    low, high, p = sig.bootstrap_difference(accuracy(good), accuracy(good))
    assert (low, high, p) == (0.0, 0.0, 1.0)  # a method against itself
    # the resampled accuracies scatter around the observed one
    assert abs(boot[good][1][0].mean() - m[good]["accuracy"]) < 0.01


def test_paired_resampling_refuses_different_images(tmp_path, two_runs):
    sig.bootstrap_runs.cache_clear()
    other = save_predictions(tmp_path / "other.npz", np.zeros((10, 2)), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="other.npz: its test images differ"):
        sig.bootstrap_runs((two_runs[0], other), 10, 0)


def test_compare_bootstraps_saved_predictions_and_marks_winners(tmp_path):
    sig.bootstrap_runs.cache_clear()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    values, runs = {}, []

    def add(method, seed, fraction, strength):
        logits = rng.normal(size=(200, 2)) + strength * np.eye(2)[labels]
        m = classification_metrics(labels, logits)
        values[(method, seed, fraction)] = (m["accuracy"], m["auc"])
        path = save_predictions(tmp_path / f"{method}-{seed}-{fraction}.npz", logits, labels)
        runs.append({"dataset": "d", "backbone": "b", "method": method, "seed": None if np.isnan(seed) else seed,
                     "fraction": None if np.isnan(fraction) else fraction, "files": {"predictions": path}})

    add("zeroshot", np.nan, np.nan, 0.0)
    for seed in (1, 2, 3):
        add("linear_probe", seed, 10.0, 1.0)
        add("rfc", seed, 10.0, 4.0)
    table = sig.compare(metric_rows(values), STUDY, runs, ORDER, n_resamples=200)
    row = table[(table["method"] == "rfc") & (table["reference"] == "zeroshot") & (table["fraction"] == 10.0)].iloc[0]
    assert 0 < row["boot_accuracy_low"] < row["accuracy_diff"] < row["boot_accuracy_high"]
    assert row["p_boot_accuracy"] < 1e-4 and row["boot_auc_low"] > 0
    assert table["p_boot_accuracy"].notna().sum() == 3  # three pairs at one fraction
    accuracy = pd.DataFrame(
        [("d", "b", "zeroshot", 0.0, values[("zeroshot", np.nan, np.nan)][0])]
        + [("d", "b", m, 10.0, np.mean([values[(m, s, 10.0)][0] for s in (1, 2, 3)])) for m in ("linear_probe", "rfc")],
        columns=["dataset", "backbone", "method", "fraction", "accuracy_mean"],
    )
    won = sig.winners(table, accuracy).set_index("method")
    assert won.loc["rfc", "beats_zeroshot"] and won.loc["rfc", "beats_best_baseline"]
    assert won.loc["rfc", "best_baseline"] == "linear_probe" and won.loc["linear_probe", "best_baseline"] == "rfc"
    assert not won.loc["linear_probe", "beats_best_baseline"]


def shot_rows(values):
    """values: {(method, seed, fraction, shots): (accuracy, auc)}, with a shots column"""
    rows = []
    for (method, seed, fraction, shots), (acc, auc) in values.items():
        for metric, value in (("accuracy", acc), ("auc", auc)):
            rows.append(("d", method, "b", seed, fraction, shots, "clean", "all", metric, value))
    return pd.DataFrame(rows, columns=[*COLUMNS[:5], "shots", *COLUMNS[5:]])


def test_shot_runs_pair_per_shot_count_beside_the_fractions(tmp_path):
    # linear_probe and rfc over 3 seeds at 10 % and at 2 and 8 shots; rfc - linear_probe by hand
    sig.bootstrap_runs.cache_clear()
    lp = {(s, u): 0.6 + 0.01 * s + (0.1 if u == ("f", 10.0) else 0.0) for s in (1, 2, 3) for u in (("k", 2), ("k", 8), ("f", 10.0))}
    diff = {("k", 2): [0.05, 0.07, 0.06], ("k", 8): [-0.02, 0.01, -0.03], ("f", 10.0): [0.10, 0.12, 0.08]}
    values = {("zeroshot", np.nan, np.nan, np.nan): (0.5, 0.5)}
    for (s, (kind, n)), acc in lp.items():
        fraction, shots = (n, np.nan) if kind == "f" else (np.nan, n)
        values[("linear_probe", s, fraction, shots)] = (acc, 0.8)
        values[("rfc", s, fraction, shots)] = (acc + diff[(kind, n)][s - 1], 0.8 + diff[(kind, n)][s - 1] / 2)
    table = sig.compare(shot_rows(values), STUDY, methods=ORDER)
    pair = table[(table["method"] == "rfc") & (table["reference"] == "linear_probe")]
    usage_rows = pair[sig.per_usage(pair)]
    # one row per shot count (shots first, ascending), then per fraction, then the pair's signed-rank row
    assert usage_rows["shots"].tolist()[:2] == [2, 8] and usage_rows["fraction"].isna().tolist() == [True, True, False]
    assert usage_rows["fraction"].tolist()[2] == 10.0 and np.isnan(usage_rows["shots"].tolist()[2])
    for (kind, n), d in diff.items():
        row = usage_rows[(usage_rows["shots"] == n) if kind == "k" else (usage_rows["fraction"] == n)].iloc[0]
        d = np.array(d)
        assert row["n_seeds"] == 3
        assert row["accuracy_diff"] == pytest.approx(d.mean())
        assert row["accuracy_diff_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3))
        assert row["p_t"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
        assert row["auc_diff"] == pytest.approx(d.mean() / 2)
    # the signed-rank test runs over all 9 (seed, usage) pairs, shots included
    whole = pair[~sig.per_usage(pair)].iloc[0]
    every = np.concatenate(list(diff.values()))
    assert whole["n_pairs"] == 9 and whole["p_wilcoxon"] == pytest.approx(stats.wilcoxon(every).pvalue)
    # zero-shot's one run pairs with every shot run too
    zs = table[(table["method"] == "rfc") & (table["reference"] == "zeroshot") & (table["shots"] == 2)].iloc[0]
    assert zs["accuracy_diff"] == pytest.approx(np.mean([lp[(s, ("k", 2))] + diff[("k", 2)][s - 1] - 0.5 for s in (1, 2, 3)]))
    # Holm counts the shot rows' tests with the fractions': 3 pairs x 3 usages
    assert table["p_t"].notna().sum() == 9 and table["p_t_holm"].to_numpy() == pytest.approx(sig.holm(table["p_t"]), nan_ok=True)


def test_shot_runs_are_bootstrapped_and_marked_per_shot_count(tmp_path):
    sig.bootstrap_runs.cache_clear()
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    values, runs = {}, []

    def add(method, seed, fraction, shots, strength):
        logits = rng.normal(size=(200, 2)) + strength * np.eye(2)[labels]
        m = classification_metrics(labels, logits)
        values[(method, seed, fraction, shots)] = (m["accuracy"], m["auc"])
        path = save_predictions(tmp_path / f"{method}-{seed}-{fraction}-{shots}.npz", logits, labels)
        none = lambda v, kind: None if np.isnan(v) else kind(v)
        runs.append({"dataset": "d", "backbone": "b", "method": method, "seed": none(seed, int), "fraction": none(fraction, float),
                     "shots": none(shots, int), "files": {"predictions": path}})

    add("zeroshot", np.nan, np.nan, np.nan, 0.0)
    for seed in (1, 2, 3):
        add("linear_probe", seed, 10.0, np.nan, 4.0)  # at 10 % linear_probe is the stronger
        add("rfc", seed, 10.0, np.nan, 1.0)
        add("linear_probe", seed, np.nan, 4, 1.0)  # at 4 shots rfc is
        add("rfc", seed, np.nan, 4, 4.0)
    table = sig.compare(shot_rows(values), STUDY, runs, ORDER, n_resamples=200)
    at4 = table[(table["method"] == "rfc") & (table["reference"] == "linear_probe") & (table["shots"] == 4)].iloc[0]
    assert 0 < at4["boot_accuracy_low"] < at4["accuracy_diff"] < at4["boot_accuracy_high"] and at4["p_boot_accuracy"] < 1e-4
    assert table.loc[sig.per_usage(table), "p_boot_accuracy"].notna().all()  # every usage of every pair found its predictions
    mean = lambda m, f, k: np.mean([values[(m, s, f, k)][0] for s in (1, 2, 3)])
    accuracy = pd.DataFrame(
        [("d", "b", "zeroshot", 0.0, 0, values[("zeroshot", np.nan, np.nan, np.nan)][0])]
        + [("d", "b", m, 10.0, 0, mean(m, 10.0, np.nan)) for m in ("linear_probe", "rfc")]
        + [("d", "b", m, 0.0, 4, mean(m, np.nan, 4)) for m in ("linear_probe", "rfc")],
        columns=["dataset", "backbone", "method", "fraction", "shots", "accuracy_mean"],
    )
    won = sig.winners(table, accuracy).set_index(["method", "fraction", "shots"])
    assert won.loc[("rfc", 0.0, 4), "beats_best_baseline"] and won.loc[("rfc", 0.0, 4), "beats_zeroshot"]
    assert not won.loc[("rfc", 10.0, 0), "beats_best_baseline"] and won.loc[("linear_probe", 10.0, 0), "beats_best_baseline"]
    assert not won.loc[("linear_probe", 0.0, 4), "beats_best_baseline"]
