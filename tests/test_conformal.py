"""Split conformal prediction: the quantile rule against torchcp's re-typed and exact arithmetic, the
scores on hand-worked cases, and the coverage guarantee on exchangeable draws."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from medtune import conformal


def torchcp_threshold(scores: torch.Tensor, alpha: float) -> float:
    """torchcp 1.x ``torchcp/utils/common.py`` calculate_conformal_value, typed again."""
    n = scores.shape[0]
    quantile_value = math.ceil((n + 1) * (1 - alpha)) / n
    if quantile_value > 1:
        return math.inf
    return float(torch.kthvalue(scores, math.ceil(n * quantile_value), dim=0).values)


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.2])
def test_threshold_is_the_ceil_n_plus_one_rank(alpha):
    rng = np.random.default_rng(0)
    disagreements = []
    for n in [1, 2, 5, 8, 9, 10, 19, 35, 99, 100, 564, 1000, 2077]:
        scores = rng.random(n)
        ours = conformal.threshold(scores, alpha)
        rank = math.ceil((n + 1) * (1 - Fraction(str(alpha))))  # exact arithmetic
        assert ours == (math.inf if rank > n else np.sort(scores)[rank - 1]), (n, alpha)
        if ours != torchcp_threshold(torch.tensor(scores), alpha):
            disagreements.append(n)
    # torchcp rounds twice (k / n, then n * that) and lands one rank higher for a few n
    assert disagreements == {0.1: [564], 0.05: [2077], 0.2: [35]}[alpha]
    # fewer than 1/alpha - 1 calibration images cannot give the guarantee: every class is in the set
    assert conformal.threshold(np.ones(8), 0.1) == math.inf


def test_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    np.testing.assert_allclose(conformal.class_scores(p, "lac"), 1 - p)
    # APS: the mass of every class at least as probable, its own included; tied classes alike
    np.testing.assert_allclose(conformal.class_scores(p, "aps"), [[0.5, 0.8, 1.0], [0.8, 0.8, 1.0], [1.0, 0.9, 0.7]])
    logits = np.log(p)
    np.testing.assert_array_equal(conformal.prediction_sets(logits, 0.8, "aps"), [[True, True, False], [True, True, False], [False, False, True]])
    np.testing.assert_array_equal(conformal.prediction_sets(logits, 0.65, "lac"), [[True, False, False], [True, True, False], [False, False, True]])
    with pytest.raises(ValueError, match="unknown conformal score 'raps'"):
        conformal.class_scores(p, "raps")


def test_set_metrics_by_hand():
    sets = np.array([[True, False], [True, True], [False, True], [True, False]])
    labels = np.array([0, 1, 0, 1])
    assert conformal.set_metrics(sets, labels) == {"coverage": 0.5, "set_size": 1.25, "worst_class_coverage": 0.5}
    assert conformal.set_metrics(sets, np.array([0, 1, 1, 0]))["worst_class_coverage"] == 1.0


@pytest.mark.parametrize("score", conformal.SCORES)
def test_exchangeable_images_are_covered_and_a_shift_is_not(score):
    """Split conformal's guarantee: E[coverage] lies in [1 - alpha, 1 - alpha + 1/(n + 1)] for exchangeable
    calibration and test images. Averaged over 40 seeded draws of 400 calibration and 2,000 test images."""
    rng = np.random.default_rng(1)
    coverages, shifted = [], []
    for _ in range(40):
        labels = rng.integers(0, 5, 2400)
        logits = rng.normal(size=(2400, 5)) + 2.0 * np.eye(5)[labels]
        q = conformal.calibrate(logits[:400], labels[:400], score, 0.1)
        coverages.append(conformal.set_metrics(conformal.prediction_sets(logits[400:], q, score), labels[400:])["coverage"])
        weaker = rng.normal(size=(2000, 5)) + 0.8 * np.eye(5)[labels[400:]]  # a test set the head separates less well
        shifted.append(conformal.set_metrics(conformal.prediction_sets(weaker, q, score), labels[400:])["coverage"])
    assert 0.9 - 0.005 <= np.mean(coverages) <= 0.9 + 1 / 401 + 0.005
    assert np.mean(shifted) < 0.85


def test_calibration_half_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 7, 1])
    mask = conformal.calibration_half(labels, seed=3)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [5, 3, 1]
    assert np.array_equal(mask, conformal.calibration_half(labels, seed=3))
    assert not np.array_equal(mask, conformal.calibration_half(labels, seed=4))
