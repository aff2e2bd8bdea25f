import numpy as np
import pandas as pd
import pytest

from medtune.subsets import per_class_count, stratified_subsets

FRACTIONS = [0.1, 0.5, 1, 5, 10, 50]


@pytest.fixture
def train():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=3000, p=[0.7, 0.25, 0.05])
    return pd.DataFrame({"index": np.arange(10, 3010), "label": labels})


def test_every_class_kept_and_stratified(train):
    subsets = stratified_subsets(train, FRACTIONS, seed=1)
    counts = train["label"].value_counts()
    for fraction, subset in subsets.items():
        got = subset["label"].value_counts()
        assert set(got.index) == {0, 1, 2}
        for label, n in counts.items():
            assert got[label] == max(1, round(n * fraction / 100))


def test_nested_across_fractions(train):
    subsets = stratified_subsets(train, FRACTIONS, seed=3)
    for small, large in zip(FRACTIONS, FRACTIONS[1:]):
        assert set(subsets[small]["index"]) <= set(subsets[large]["index"])


def test_deterministic_and_seed_dependent(train):
    a = stratified_subsets(train, [5], seed=7)[5]
    b = stratified_subsets(train, [5], seed=7)[5]
    c = stratified_subsets(train, [5], seed=8)[5]
    pd.testing.assert_frame_equal(a, b)
    assert not a["index"].equals(c["index"])


def test_same_subset_whether_fractions_asked_together_or_alone(train):
    together = stratified_subsets(train, FRACTIONS, seed=2)
    for fraction in FRACTIONS:
        pd.testing.assert_frame_equal(together[fraction], stratified_subsets(train, [fraction], seed=2)[fraction])


def test_subset_rows_come_from_train(train):
    subset = stratified_subsets(train, [10], seed=0)[10]
    merged = subset.merge(train, on="index", suffixes=("", "_train"))
    assert len(merged) == len(subset)
    assert (merged["label"] == merged["label_train"]).all()


@pytest.mark.parametrize("fraction", [0, -1, 100.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match="outside"):
        per_class_count(10, fraction)
