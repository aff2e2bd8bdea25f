"""The linear probe's L2 sweep against CLIP's protocol: the full 97-value grid, fitted with scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from medtune.heads import FitData, build_head, fit, predict
from medtune.methods.linear_probe import c_grid, search_indices

from medtune.methods.linear_probe import SPEC

PARAMS = SPEC["defaults"]
COARSE = {**PARAMS, "search": "coarse_to_fine"}


def _problem(seed, n_classes=3, dim=24, n_train=45, n_val=150):
    """Few noisy training images, many validation ones: validation accuracy varies with C."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 0.6
    def draw(n):
        y = np.arange(n) % n_classes
        x = centres[y] + rng.normal(size=(n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y
    (xt, yt), (xv, yv) = draw(n_train), draw(n_val)
    return FitData(xt, yt, xv, yv, np.eye(n_classes, dim, dtype=np.float32), 1.0)


def _full_grid(data, seed):
    """CLIP's sweep written out: lambda (here sklearn's C = 1/lambda) over 10^-6 .. 10^6, 96 steps;
    the best validation accuracy, ties to the strongest regularisation."""
    best_c, best_acc = None, -1.0
    for C in np.logspace(-6, 6, 97):
        clf = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(data.train_features, data.train_labels)
        acc = clf.score(data.val_features, data.val_labels)
        if acc > best_acc:
            best_c, best_acc = C, acc
    return best_c, best_acc


def test_grid_is_clips():
    grid = c_grid([1e-6, 1e6], 8)
    assert len(grid) == 97 and grid[0] == pytest.approx(1e-6, rel=1e-12) and grid[-1] == pytest.approx(1e6, rel=1e-12)
    np.testing.assert_allclose(grid[1:] / grid[:-1], 10 ** (1 / 8), rtol=1e-12)


def test_defaults_are_clips_sweep():
    assert PARAMS == {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "grid", "max_iter": 1000}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("problem", [0, 1, 2, 3])
def test_default_and_coarse_to_fine_choose_as_the_full_grid(problem):
    data = _problem(problem, n_classes=2 + problem % 2)
    want_c, want_acc = _full_grid(data, seed=0)
    _, grid = fit("linear_probe", data, PARAMS, seed=0)
    assert grid["fits"] == 97 and grid["C"] == pytest.approx(want_c, rel=1e-9)
    assert grid["val_accuracy_by_C"][str(grid["C"])] == pytest.approx(want_acc, abs=1e-12)
    assert len(set(grid["val_accuracy_by_C"].values())) > 2  # accuracy depends on C: there is something to find
    # on these curves the cheaper search lands on the same C (it is not guaranteed to: see the module)
    _, coarse = fit("linear_probe", data, COARSE, seed=0)
    assert coarse["C"] == pytest.approx(want_c, rel=1e-9)
    assert coarse["fits"] <= 29  # 25 half-decade values, then 2 + 2 around the peak (fewer at the grid's ends)
    # every value it fits is the grid's own fit at that C
    assert all(grid["val_accuracy_by_C"][c] == acc for c, acc in coarse["val_accuracy_by_C"].items())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_classes", [2, 3])
def test_saved_head_predicts_as_sklearn_at_the_chosen_C(n_classes):
    data = _problem(7, n_classes=n_classes)
    state, info = fit("linear_probe", data, COARSE, seed=0)
    clf = LogisticRegression(C=info["C"], max_iter=1000, random_state=0).fit(data.train_features, data.train_labels)
    logits = predict(build_head(state), data.val_features)
    np.testing.assert_array_equal(logits.argmax(1), clf.predict(data.val_features))
    # softmax over the head's logits is sklearn's probability
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits).double(), 1).numpy(),
                               clf.predict_proba(data.val_features), atol=1e-5)


def _calls(scores, stride, search="coarse_to_fine"):
    seen = []

    def score(i):
        seen.append(i)
        return scores[i]

    return search_indices(score, len(scores), stride, search), seen


def test_search_walks_to_the_left_edge_of_a_plateau_and_never_refits():
    scores = [0.1] * 9 + [0.5] * 3 + [0.9] * 10 + [0.2] * 3  # 25 values, stride 4: plateau starts at 12
    best, seen = _calls(scores, 4)
    assert best == 12 == int(np.argmax(scores))
    assert len(seen) == len(set(seen)) < len(scores)


def test_search_finds_a_single_peak_between_coarse_values():
    scores = [-abs(i - 37) for i in range(97)]
    best, seen = _calls(scores, 4)
    assert best == 37 and len(seen) == 29


def test_one_training_class_predicts_it():
    data = _problem(0)
    data.train_labels = np.full_like(data.train_labels, 1)
    state, info = fit("linear_probe", data, PARAMS, seed=0)
    assert info["C"] is None and (predict(build_head(state), data.val_features).argmax(1) == 1).all()


def test_bad_search_and_range_are_refused():
    with pytest.raises(ValueError, match="search 'binary'"):
        search_indices(lambda i: 0.0, 5, 2, "binary")
    with pytest.raises(ValueError, match="C_range"):
        c_grid([10.0, 1.0], 8)
