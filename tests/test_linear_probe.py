"""The linear probe's L2 sweep against CLIP's protocol: the full 97-value grid, each fit against
scikit-learn's own Newton solver (newton-cholesky) run to convergence from a cold start."""

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


def converged(C, x, y):
    """scikit-learn's logistic regression at C, cold, run to its optimum: its Newton solver in float64
    with a gradient tolerance far below what L-BFGS reaches"""
    return LogisticRegression(C=C, solver="newton-cholesky", tol=1e-10, max_iter=500).fit(np.float64(x), y)


def _full_grid(data):
    """CLIP's sweep written out: lambda (here sklearn's C = 1/lambda) over 10^-6 .. 10^6, 96 steps;
    the best validation accuracy, ties to the strongest regularisation."""
    best_c, best_acc = None, -1.0
    for C in np.logspace(-6, 6, 97):
        clf = converged(C, data.train_features, data.train_labels)
        acc = clf.score(np.float64(data.val_features), data.val_labels)
        if acc > best_acc:
            best_c, best_acc = C, acc
    return best_c, best_acc


def test_grid_is_clips():
    grid = c_grid([1e-6, 1e6], 8)
    assert len(grid) == 97 and grid[0] == pytest.approx(1e-6, rel=1e-12) and grid[-1] == pytest.approx(1e6, rel=1e-12)
    np.testing.assert_allclose(grid[1:] / grid[:-1], 10 ** (1 / 8), rtol=1e-12)


def test_defaults_are_clips_sweep():
    assert PARAMS == {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "grid", "max_iter": 100}


@pytest.mark.parametrize("problem", [0, 1, 2, 3])
def test_default_and_coarse_to_fine_choose_as_the_full_grid(problem):
    data = _problem(problem, n_classes=2 + problem % 2)
    want_c, want_acc = _full_grid(data)
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


@pytest.mark.parametrize("n_classes", [2, 3])
def test_saved_head_predicts_as_sklearn_at_the_chosen_C(n_classes):
    data = _problem(7, n_classes=n_classes)
    state, info = fit("linear_probe", data, COARSE, seed=0)
    clf = converged(info["C"], data.train_features, data.train_labels)
    logits = predict(build_head(state), data.val_features)
    np.testing.assert_array_equal(logits.argmax(1), clf.predict(np.float64(data.val_features)))
    # softmax over the head's logits is sklearn's probability
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits).double(), 1).numpy(),
                               clf.predict_proba(np.float64(data.val_features)), atol=1e-5)


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


# ---- the regularisation path: the optimum at every C, whatever the start, threads or precision ----

from threadpoolctl import threadpool_limits

from medtune.bench.linear_probe_path import synthetic_features
from medtune.logistic import LogisticPath


def objective(C, coef, intercept, x, y):
    """scikit-learn's: the mean log-loss of the softmax (two classes: the sigmoid of one row)
    plus ||W||^2 / (2 C n), written out."""
    z = np.float64(x) @ np.atleast_2d(coef).T + intercept
    z = np.hstack([np.zeros_like(z), z]) if z.shape[1] == 1 else z
    log_p = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    return -log_p[np.arange(len(y)), y].mean() + np.sum(np.square(coef)) / (2 * C * len(y))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("exact_newton", [True, False], ids=["exact-steps", "conjugate-gradient-steps"])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_every_fit_on_the_path_is_the_optimum_whatever_the_start(n_classes, exact_newton, monkeypatch):
    """Along the path strongest first, and in a scrambled order (each fit then starts from a far
    C's solution), every C's fit is the optimum: the same coefficients both ways, those of
    scikit-learn's Newton solver run cold to a gradient of 1e-12, and an objective no higher than
    its. Separable few-shot data: the weak end is ill-conditioned there. Both ways of solving a
    Newton step: a fresh Hessian's (small models) and conjugate gradients (large ones)."""
    import medtune.logistic

    monkeypatch.setattr(medtune.logistic, "EXACT_NEWTON_PARAMETERS", 10_000 if exact_newton else 0)
    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(30, 12)).astype(np.float32)
    y = np.arange(30) % n_classes
    x[np.arange(30), y] += 1.5  # separable: the weakest C's weights are large
    grid = np.logspace(-6, 6, 13)
    along, scrambled = LogisticPath(x, y), LogisticPath(x, y)
    assert along.exact_newton == exact_newton
    for i in [6, 0, 12, 3, 9, 1, 11, 5, 7, 2, 10, 4, 8]:
        scrambled.fit(grid[i])
    for C in grid:
        ref = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=500).fit(np.float64(x), y)
        scale = max(1.0, np.abs(ref.coef_).max())
        a, b = along.fit(C), scrambled.fit(C)
        np.testing.assert_allclose(a.coef, b.coef, atol=1e-8 * scale, rtol=0)
        np.testing.assert_allclose(a.coef, ref.coef_, atol=1e-4 * scale, rtol=0)
        np.testing.assert_allclose(a.intercept, ref.intercept_, atol=1e-4 * scale, rtol=0)
        assert objective(C, a.coef, a.intercept, x, y) <= objective(C, ref.coef_, ref.intercept_, x, y) + 1e-14
        assert a.steps <= 60 and b.steps <= 60


def _default_sized(seed=0):
    """Features with the embedded default's shapes: 10,000 training images (its 50 % subset) of
    nine classes, 2,000 validation and 2,000 test images, 64-d, about 80 % accuracy."""
    f = synthetic_features(10_000, 2_000, 2_000, 64, 9, seed=seed, separation=0.2)
    return f, FitData(*f["train"], *f["val"], np.zeros((9, 64), np.float32), 1.0)


def test_rows_do_not_depend_on_threads_or_precision():
    """The default's largest subset refitted on 1 and 2 threads, from float32 and float64
    features: the same C, and test accuracy within one test image (the head is the optimum)."""
    features, data = _default_sized()
    test_x, test_y = features["test"]
    found = {}
    for threads in (1, 2):
        for dtype in (np.float32, np.float64):
            cast = FitData(data.train_features.astype(dtype), data.train_labels, data.val_features.astype(dtype),
                           data.val_labels, data.class_text, 1.0)
            with threadpool_limits(threads):
                state, info = fit("linear_probe", cast, COARSE, seed=0)
            found[(threads, dtype)] = (info["C"], float((predict(build_head(state), test_x).argmax(1) == test_y).mean()))
    assert len({c for c, _ in found.values()}) == 1, found
    accuracies = [a for _, a in found.values()]
    assert max(accuracies) - min(accuracies) <= 1 / len(test_y), found


def _cold_converged_choice(data, params):
    """The same coarse-to-fine search over cold scikit-learn fits run to convergence (its Newton
    solver, float64): the chosen C, its validation accuracy and the fit."""
    grid = c_grid(params["C_range"], params["steps_per_decade"])
    fits = {}

    def score(i):
        fits[i] = converged(grid[i], data.train_features, data.train_labels)
        return float(fits[i].score(np.float64(data.val_features), data.val_labels))

    best = search_indices(score, len(grid), params["steps_per_decade"] // 2, params["search"])
    return grid[best], score(best), fits[best]


def _feature_sets():
    """The default's subsets below 50 % (its sizes: 0.1 % to 10 % of 20,000 images, nested, nine
    classes, 2,000 validation and test images) and two other sets: a binary one of PCam's kind and
    a three-class one. 16-d features: scikit-learn's multinomial Newton solver, the reference,
    takes minutes a sweep at the default's 64 (its Hessian is (classes x features)^2 per image);
    docs/speed.md compares the default's own 64-d features."""
    default = synthetic_features(2_000, 2_000, 2_000, 16, 9, seed=3, separation=0.4)
    for n in (18, 99, 198, 999, 1998):
        yield f"default {n}", default["train"][0][:n], default["train"][1][:n], default
    binary = synthetic_features(3_000, 1_000, 1_000, 16, 2, seed=4, separation=0.15)
    yield "binary 3000", *binary["train"], binary
    three = synthetic_features(600, 600, 600, 16, 3, seed=5, separation=0.4)
    yield "three-class 600", *three["train"], three


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_chosen_C_matches_a_cold_converged_scikit_learn_sweep():
    """On every feature set the path's choice has the validation accuracy of the cold converged
    sweep's choice to one image, and a test accuracy within half a point of it."""
    for name, x, y, features in _feature_sets():
        (val_x, val_y), (test_x, test_y) = features["val"], features["test"]
        classes = int(features["val"][1].max()) + 1
        data = FitData(x, y, val_x, val_y, np.zeros((classes, x.shape[1]), np.float32), 1.0)
        state, info = fit("linear_probe", data, COARSE, seed=0)
        C, val_accuracy, clf = _cold_converged_choice(data, COARSE)
        ours = info["val_accuracy_by_C"][str(info["C"])]
        assert abs(ours - val_accuracy) <= 1 / len(val_y) + 1e-12, (name, info["C"], C)
        test_ours = float((predict(build_head(state), test_x).argmax(1) == test_y).mean())
        assert abs(test_ours - clf.score(np.float64(test_x), test_y)) <= 0.005, (name, info["C"], C)
