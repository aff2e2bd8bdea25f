import numpy as np
import pandas as pd
import pytest

from medtune.subsets import per_class_count, seed_subsets, shot_subsets, stratified_subsets

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


# ---- class_balance: equal (CLIPath's cal_train_index draws the same count from each class)


@pytest.fixture
def skewed():
    """100 training images, hand-countable: 70 of class 0, 25 of class 1, 5 of class 2, in shuffled order."""
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [70, 25, 5]))
    return pd.DataFrame({"index": np.arange(500, 600), "label": labels})


# worked by hand: floor(100 * f% / 3), at least 1, at most 5 (class 2's size)
EQUAL_COUNTS = {0.5: 1, 1: 1, 3: 1, 6: 2, 10: 3, 12: 4, 15: 5, 30: 5, 100: 5}


def test_equal_counts_per_class_hand_worked(skewed):
    subsets = stratified_subsets(skewed, list(EQUAL_COUNTS), seed=4, balance="equal")
    for fraction, count in EQUAL_COUNTS.items():
        got = subsets[fraction]["label"].value_counts().to_dict()
        assert got == {0: count, 1: count, 2: count}, fraction


def test_equal_count_uses_the_fraction_as_written():
    """375 images at 18.4 % over 3 classes: 69 images, 23 a class (float arithmetic gives 22.999...)."""
    train = pd.DataFrame({"index": np.arange(375), "label": np.repeat([0, 1, 2], 125)})
    got = stratified_subsets(train, [18.4], seed=0, balance="equal")[18.4]["label"].value_counts()
    assert got.to_dict() == {0: 23, 1: 23, 2: 23}


def test_equal_is_nested_and_seeded(skewed):
    fractions = sorted(EQUAL_COUNTS)
    subsets = stratified_subsets(skewed, fractions, seed=3, balance="equal")
    for small, large in zip(fractions, fractions[1:]):
        assert set(subsets[small]["index"]) <= set(subsets[large]["index"])
    again = stratified_subsets(skewed, [10], seed=3, balance="equal")[10]
    other = stratified_subsets(skewed, [10], seed=9, balance="equal")[10]
    pd.testing.assert_frame_equal(subsets[10], again)
    assert not subsets[10]["index"].equals(other["index"])
    merged = subsets[10].merge(skewed, on="index", suffixes=("", "_train"))
    assert len(merged) == 9 and (merged["label"] == merged["label_train"]).all()


def test_equal_and_proportional_differ_and_proportional_is_the_default(skewed):
    default = stratified_subsets(skewed, [20], seed=1)[20]
    assert default["label"].value_counts().to_dict() == {0: 14, 1: 5, 2: 1}  # round(20 % of 70, 25, 5)
    pd.testing.assert_frame_equal(default, stratified_subsets(skewed, [20], seed=1, balance="proportional")[20])
    assert stratified_subsets(skewed, [20], seed=1, balance="equal")[20]["label"].value_counts().to_dict() == {0: 5, 1: 5, 2: 5}


def test_unknown_balance_is_refused(skewed):
    with pytest.raises(ValueError, match="class_balance 'even'"):
        stratified_subsets(skewed, [10], seed=0, balance="even")


SHOTS = [1, 2, 4, 8, 16]


def test_shots_take_exactly_k_of_every_class(train):
    counts = train["label"].value_counts()  # class 2 has about 150 images, so 16 fit every class
    for k, subset in shot_subsets(train, SHOTS, seed=1).items():
        assert subset["label"].value_counts().to_dict() == {label: k for label in counts.index}
        assert subset["index"].is_monotonic_increasing and subset["index"].is_unique


def test_shots_nested_seeded_and_inside_the_fractions(train):
    subsets = shot_subsets(train, SHOTS, seed=3)
    for small, large in zip(SHOTS, SHOTS[1:]):
        assert set(subsets[small]["index"]) <= set(subsets[large]["index"])
    pd.testing.assert_frame_equal(subsets[4], shot_subsets(train, [4], seed=3)[4])  # alone or together
    assert not subsets[16]["index"].equals(shot_subsets(train, [16], seed=4)[16]["index"])
    # 50 % of each class is at least 16 images: the 16-shot subset lies inside it (same permutations)
    assert set(subsets[16]["index"]) <= set(stratified_subsets(train, [50], seed=3)[50]["index"])
    merged = subsets[16].merge(train, on="index", suffixes=("", "_train"))
    assert len(merged) == 16 * 3 and (merged["label"] == merged["label_train"]).all()


def test_a_class_with_fewer_images_than_shots_gives_all_it_has():
    train = pd.DataFrame({"index": np.arange(7), "label": [0, 0, 0, 0, 0, 1, 1]})
    subset = shot_subsets(train, [4], seed=0)[4]
    assert subset["label"].value_counts().to_dict() == {0: 4, 1: 2}


def test_shots_must_be_positive(train):
    with pytest.raises(ValueError, match="shots 0"):
        shot_subsets(train, [0], seed=0)


@pytest.mark.parametrize("balance", ["proportional", "equal"])
def test_one_job_per_dataset_writes_what_each_subset_alone_would(train, balance):
    """The subsample job draws every fraction and shot count of a seed at once
    (seed_subsets): each must be the subset the per-subset call gives alone."""
    fractions, shots = ["0.1", "1", "50"], [1, 4, 16]
    together = seed_subsets(train, 5, fractions, shots, balance)
    assert list(together) == ["frac0.1", "frac1", "frac50", "shots1", "shots4", "shots16"]
    for f in fractions:
        pd.testing.assert_frame_equal(together[f"frac{f}"], stratified_subsets(train, [float(f)], 5, balance)[float(f)])
    for k in shots:
        pd.testing.assert_frame_equal(together[f"shots{k}"], shot_subsets(train, [k], 5)[k])
