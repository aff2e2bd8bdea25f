"""Linear probe: L2-regularised logistic regression on frozen features, the strength chosen on
validation as in CLIP's linear-probe protocol, fitted as a regularisation path.

CLIP swept the L2 strength lambda over 1e-6..1e6, logarithmically spaced, 96 steps
(97 values, 8 a decade), and described the sweep as a parametric binary search: start
at half-decade spacing, then repeatedly halve the spacing around the peak until it
reaches 8 steps a decade. Both are here, over scikit-learn's C (= 1 / lambda, the same
symmetric range, and scikit-learn's objective):

* ``search: grid`` (default) fits every grid value;
* ``search: coarse_to_fine`` fits every ``steps_per_decade / 2``-th grid value, then
  around the best so far the values half that stride away on each side, halving down
  to neighbouring grid values: 25 + 2 x 2 = 29 fits instead of 97.

The fits run from the strongest regularisation to the weakest, each started from the
solution at the nearest C already fitted, and each solved to its optimum by Newton's
method (:mod:`medtune.logistic`): every fit at a C is the one optimum of that C, whatever
the order, the start, the features' float precision or the thread count, so a C the
coarse-to-fine search fits gives the classifier the full grid fits at that C. (Until
issue 30, 29 or 97 cold scikit-learn L-BFGS fits stopped at ``max_iter`` or at their
tolerance short of the optimum at the weak end, and where they stopped depended on
precision and threads.)

Both searches keep the C with the highest validation accuracy, ties to the smallest C
(the strongest regularisation); ties also pull the refinement towards smaller C, so on a
plateau it walks to the plateau's edge as the grid's choice does. The search finds the
grid's optimum when validation accuracy has one peak at the coarse spacing; validation
accuracy wobbles by an image or two from one C to the next, and on such curves it can stop
on a lower peak. ``train.json`` records every C fitted and its validation accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medtune.logistic import LogisticPath

SPEC = {
    "training": "frozen",
    "requires": [],
    "label": "linear probe",
    "order": 10,
    # CLIP's protocol: C = 1/lambda over 1e-6..1e6, 8 values a decade (96 steps), chosen on validation
    "defaults": {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "grid", "max_iter": 100},
    "params": {
        "C_range": {
            "description": "smallest and largest C of the grid, both included (CLIP: 1e-6..1e6)",
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "minItems": 2,
            "maxItems": 2,
        },
        "steps_per_decade": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "description": "grid values a decade (CLIP: 8, 96 steps over 1e-6..1e6)",
        },
        "search": {
            "enum": ["grid", "coarse_to_fine"],
            "description": "grid: every value (default); coarse_to_fine: half-decade pass, then halving around the peak "
            "(CLIP's parametric binary search), 29 fits instead of 97, may stop on a lower peak",
        },
        "max_iter": {
            "type": "integer",
            "minimum": 1,
            "description": "most Newton steps a fit may take (they take about 5 to 15); a fit not at its optimum by then fails the job",
        },
    },
}

SEARCHES = ("coarse_to_fine", "grid")


def c_grid(c_range, steps_per_decade: int) -> np.ndarray:
    """Log-spaced C from ``c_range[0]`` to ``c_range[1]``, both included: 97 values for 1e-6..1e6 at 8 a decade."""
    low, high = (float(c) for c in c_range)
    if not 0 < low <= high:
        raise ValueError(f"linear_probe C_range {list(c_range)}: need 0 < low <= high")
    steps = max(0, int(round(np.log10(high / low) * steps_per_decade)))
    return np.logspace(np.log10(low), np.log10(high), steps + 1)


def search_indices(score, n: int, stride: int, search: str) -> int:
    """The grid index with the best ``score(i)`` (ties: the smallest index), ``score`` called at most once per index."""
    if search not in SEARCHES:
        raise ValueError(f"linear_probe search {search!r}: choose one of {', '.join(SEARCHES)}")
    scores: dict[int, float] = {}

    def visit(indices) -> None:
        for i in indices:
            if 0 <= i < n and i not in scores:
                scores[i] = score(i)

    def best() -> int:
        return max(scores, key=lambda i: (scores[i], -i))

    if search == "grid" or stride <= 1:
        visit(range(n))
        return best()
    visit(list(range(0, n, stride)) + [n - 1])
    step = stride
    while step > 1:
        step = (step + 1) // 2
        centre = best()
        visit([centre - step, centre + step])
    return best()


def fit(data, params, seed):
    """The head at the C with the best validation accuracy. ``seed`` is unused: every fit is
    its C's one optimum."""
    n_classes = data.class_count()
    present = np.unique(data.train_labels)
    grid = c_grid(params["C_range"], params["steps_per_decade"])
    fits, accuracy = {}, {}
    best = None
    if len(present) >= 2:  # one class: the probe can only predict it
        path = LogisticPath(data.train_features, data.train_labels, max_iter=params["max_iter"])

        def score(i: int) -> float:
            C = float(grid[i])
            fits[C] = path.fit(C)
            accuracy[C] = float(np.mean(path.predict(fits[C], data.val_features) == data.val_labels))
            return accuracy[C]

        stride = max(1, params["steps_per_decade"] // 2)  # CLIP's start: half-decade spacing
        best = fits[float(grid[search_indices(score, len(grid), stride, params["search"])])]
    dim = data.train_features.shape[1]
    weight, bias = np.zeros((n_classes, dim), np.float32), np.zeros(n_classes, np.float32)
    if best is None:
        bias[present[0]] = 1.0
    else:
        if len(present) == 2:
            # one row for two classes, as scikit-learn's: logit(c1) - logit(c0) = w.f + b
            weight[present[1]], bias[present[1]] = best.coef[0], best.intercept[0]
        else:
            weight[present], bias[present] = best.coef, best.intercept
        # classes absent from the subset never win
        bias[np.setdiff1d(np.arange(n_classes), present)] = -1e4
    state = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
    info = {
        "C": best.C if best is not None else None,
        "val_accuracy_by_C": {str(C): accuracy[C] for C in sorted(fits)},
        "fits": len(fits),
        "newton_steps": sum(f.steps for f in fits.values()),
        "hessians": sum(f.hessians for f in fits.values()),
    }
    return state, info


def build_head(s: dict) -> nn.Module:
    head = nn.Linear(s["weight"].shape[1], s["weight"].shape[0])
    head.weight.data.copy_(s["weight"])
    head.bias.data.copy_(s["bias"])
    return head
