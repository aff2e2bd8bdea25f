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


def test_balanced_accuracy_by_hand_and_against_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score

    # predictions 0, 0, 1, 1: recall 2/3 for class 0, 1/1 for class 1 -> mean 5/6
    labels = np.array([0, 0, 0, 1])
    logits = np.array([[2, 0], [1, 0], [0, 1], [0, 3]], dtype=float)
    assert classification_metrics(labels, logits)["balanced_accuracy"] == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 4, 200), rng.normal(size=(200, 4))
    expected = balanced_accuracy_score(labels, logits.argmax(1))
    assert classification_metrics(labels, logits)["balanced_accuracy"] == pytest.approx(expected)


def test_ece_by_hand_pins_torchmetrics_bins():
    from medtune.metrics import expected_calibration_error

    # 4 bins [0,.25) [.25,.5) [.5,.75) [.75,1) and a bin of its own for confidence exactly 1
    probs = np.array([
        [0.5, 0.5, 0.0, 0.0],  # label 0: right (first of tied maxima), confidence .5 -> third bin, not second
        [0.4, 0.3, 0.3, 0.0],  # label 1: wrong, .4
        [0.6, 0.4, 0.0, 0.0],  # label 1: wrong, .6
        [1.0, 0.0, 0.0, 0.0],  # label 2: wrong, 1.0 -> its own bin
        [0.8, 0.2, 0.0, 0.0],  # label 0: right, .8
    ])
    labels = np.array([0, 1, 1, 2, 0])
    # |acc - conf| x share: {.4}: .4 x 1/5; {.5, .6}: |.5 - .55| x 2/5; {.8}: .2 x 1/5; {1}: 1 x 1/5
    assert expected_calibration_error(labels, probs, 4) == pytest.approx(0.08 + 0.02 + 0.04 + 0.20)
    # right-closed bins, (lo, hi], would give .30: the half-open rule above is what is pinned


def test_ece_matches_torchmetrics_documented_example():
    from medtune.metrics import expected_calibration_error

    # torchmetrics' multiclass_calibration_error docstring: n_bins=3, norm l1 -> 0.2000
    probs = np.array([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.90, 0.05, 0.05]])
    assert expected_calibration_error(np.array([0, 1, 2, 0]), probs, 3) == pytest.approx(0.2)


def test_ece_of_logits_is_that_of_their_softmax_in_both_bin_counts():
    from medtune.metrics import expected_calibration_error, softmax

    labels = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, 0.0], [0.0, 0.5], [3.0, 0.0], [0.1, 0.0]])
    m = classification_metrics(labels, logits)
    probs = softmax(logits)
    # by hand, 5 bins: confidences .881 (right), .622 (right), .953 (wrong), .525 (right)
    # bins [.4,.6): {.525} gap .475; [.6,.8): {.622} gap .378; [.8,1): {.881 right, .953 wrong} gap |.5 - .917|
    conf = probs.max(1)
    by_hand = (abs(1 - conf[3]) + abs(1 - conf[1]) + 2 * abs(0.5 - (conf[0] + conf[2]) / 2)) / 4
    assert m["ece5"] == pytest.approx(by_hand)
    assert m["ece15"] == pytest.approx(expected_calibration_error(labels, probs, 15))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_metrics_match_scikit_learn(n_classes):
    """The numpy metrics against scikit-learn's, on scores with many ties and classes never predicted."""
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 400)
    labels[:n_classes] = np.arange(n_classes)  # every class present
    # coarse scores: many exact ties; class 0 is never the argmax when there are more than two
    logits = rng.integers(0, 4, (400, n_classes)).astype(float) + labels[:, None] * (np.arange(n_classes) == labels[:, None])
    if n_classes > 2:
        logits[:, 0] -= 10
    m = classification_metrics(labels, logits)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    preds = probs.argmax(1)
    average = "binary" if n_classes == 2 else "macro"
    every = np.arange(n_classes)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, preds, average=average, labels=every, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, preds, average=average, labels=every, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, preds, average=average, labels=every, zero_division=0))
    reference = (skm.roc_auc_score(labels, probs[:, 1]) if n_classes == 2
                 else skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["auc"] == pytest.approx(reference, abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds), abs=1e-15)


def test_balanced_accuracy_leaves_out_a_class_only_predicted_as_scikit_learn_does():
    """A test split without one class (predicted all the same) averages recall over the classes it has."""
    skm = pytest.importorskip("sklearn.metrics")
    labels = np.array([0, 0, 0, 2, 2])
    logits = np.eye(3)[[0, 1, 0, 2, 1]] * 3.0  # class 1 is predicted twice but never the label
    expected = (2 / 3 + 1 / 2) / 2
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        assert skm.balanced_accuracy_score(labels, logits.argmax(1)) == pytest.approx(expected)
    assert classification_metrics(labels, logits)["balanced_accuracy"] == pytest.approx(expected, abs=1e-15)


def test_evaluating_imports_no_scikit_learn():
    """sklearn.metrics costs seconds of every evaluating job; only the linear probe needs sklearn."""
    import subprocess
    import sys

    code = "import sys, medtune.metrics, medtune.evaluate; print('sklearn' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
