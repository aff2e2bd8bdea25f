import numpy as np
import pytest

from medtune.metrics import classification_metrics, per_group_top_k, top_k_accuracy


def test_binary_metrics_by_hand():
    labels = np.array([1, 1, 1, 0, 0])
    # predictions: 1, 1, 0, 1, 0 -> TP=2 FN=1 FP=1 TN=1
    logits = np.array([[0, 2], [0, 1], [1, 0], [0, 3], [2, 0]], dtype=float)
    m = classification_metrics(labels, logits)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # scores of the positive class: 0.88, 0.73, 0.27 (positives) vs 0.95, 0.12 (negatives)
    # pairs ranked right: (0.88>0.12), (0.73>0.12), (0.27>0.12) = 3 of 6
    assert m["auc"] == pytest.approx(3 / 6)
    assert "top3" not in m


def test_multiclass_macro_and_topk():
    labels = np.array([0, 1, 2, 3])
    logits = np.array(
        [
            [3, 2, 1, 0],  # top1 right
            [3, 2, 1, 0],  # label 1 is 2nd
            [3, 2, 1, 0],  # label 2 is 3rd
            [3, 2, 1, 0],  # label 3 is 4th
        ],
        dtype=float,
    )
    m = classification_metrics(labels, logits)
    assert m["top1"] == pytest.approx(0.25)
    assert m["top3"] == pytest.approx(0.75)
    # only class 0 is ever predicted: precision 1/4 for it, 0 for the rest -> macro 1/16
    assert m["precision"] == pytest.approx(1 / 16)
    assert m["recall"] == pytest.approx(1 / 4)


def test_top_k_per_group():
    labels = np.array([0, 1, 2, 0])
    logits = np.array([[1, 0, 0, 0], [1, 0.5, 0, 0], [1, 0.5, 0.2, 0], [0, 0, 0, 1]], dtype=float)
    groups = np.array(["brain", "brain", "lung", "lung"])
    rows = per_group_top_k(labels, logits, groups).set_index(["group", "metric"])["value"]
    assert rows[("brain", "top1")] == pytest.approx(0.5)
    assert rows[("brain", "top3")] == pytest.approx(1.0)
    assert rows[("lung", "top1")] == pytest.approx(0.0)
    assert rows[("lung", "top3")] == pytest.approx(1.0)  # ties rank by class order: label 0 is 2nd
    assert top_k_accuracy(labels, logits, 1) == pytest.approx(0.25)


def test_auc_undefined_with_one_class():
    m = classification_metrics(np.array([1, 1]), np.array([[0, 1.0], [1.0, 0]]))
    assert np.isnan(m["auc"])
