"""Split conformal prediction sets from a head's logits (Vovk et al. 2005; as CLIP-Conformal,
``jusiro/CLIP-Conformal`` ``conformal/``, runs it through ``torchcp``).

Class probabilities are the softmax of the logits. A non-conformity score ``s(x, y)``:

* **LAC** (least ambiguous set-valued classifier, Sadinle et al. 2019; torchcp's ``THR``):
  ``1 - p_y``;
* **APS** (adaptive prediction sets, Romano et al. 2020), not randomised: the probability mass of
  every class at least as probable as ``y``, ``y``'s own included (torchcp's APS, which CLIP-
  Conformal runs, subtracts a uniform random share of ``p_y``; without it the sets are a little
  larger and the same for the same logits).

Calibrated on n images with labels, ``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest
calibration score (the ``ceil((n+1)(1-alpha))/n`` quantile, as torchcp's ``calculate_conformal_value``
means it; infinite, every class in every set, when that rank exceeds n), and the set of an image
is ``{y : s(x, y) <= q}``. When calibration and test images are exchangeable, the set holds
the true class with probability at least ``1 - alpha``; under a shift (another centre, a
corruption) it need not, and by how much it falls short is what the conformal study reports.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from medtune.metrics import softmax

SCORES = ("lac", "aps")


def class_scores(probabilities: np.ndarray, score: str) -> np.ndarray:
    """``s(x, y)`` for every image and every class y (N x C)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if score == "lac":
        return 1.0 - p
    if score == "aps":
        # mass of the classes at least as probable as y: sort descending, cumulate, and give tied
        # classes the mass up to the last of them (so the score does not depend on their order)
        order = np.argsort(-p, axis=1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=1)
        cumulative = np.cumsum(ranked, axis=1)
        last_tied = cumulative.copy()
        for j in range(p.shape[1] - 2, -1, -1):  # from the right: a tie takes its run's end
            last_tied[:, j] = np.where(ranked[:, j] == ranked[:, j + 1], last_tied[:, j + 1], cumulative[:, j])
        out = np.empty_like(p)
        np.put_along_axis(out, order, last_tied, axis=1)
        return out
    raise ValueError(f"unknown conformal score {score!r}; expected one of {', '.join(SCORES)}")


def threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of the true-class scores of n calibration images."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha}")
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    # in exact arithmetic: torchcp's ceil(n * (ceil((n+1)(1-alpha)) / n)) rounds twice, and lands one
    # rank higher for some n (n = 564 at alpha 0.1: 510 instead of 509)
    rank = math.ceil((len(scores) + 1) * (1 - Fraction(str(alpha))))
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


def calibrate(logits: np.ndarray, labels: np.ndarray, score: str, alpha: float) -> float:
    s = class_scores(softmax(np.asarray(logits, dtype=np.float64)), score)
    return threshold(s[np.arange(len(labels)), labels], alpha)


def prediction_sets(logits: np.ndarray, q: float, score: str) -> np.ndarray:
    """N x C booleans: class y is in image x's set when ``s(x, y) <= q``."""
    return class_scores(softmax(np.asarray(logits, dtype=np.float64)), score) <= q


def set_metrics(sets: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Coverage (share of images whose set holds their class), mean set size, and the lowest
    coverage of any class present (the worst class's)."""
    covered = sets[np.arange(len(labels)), labels]
    per_class = [covered[labels == c].mean() for c in np.unique(labels)]
    return {"coverage": float(covered.mean()), "set_size": float(sets.sum(axis=1).mean()), "worst_class_coverage": float(min(per_class))}


def calibration_half(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded, class-stratified half of the calibration images (``max(1, int(n_c / 2))`` of each
    class, as CLIP-Conformal's ``standard_split`` with p = 0.5): boolean mask of the images that
    calibrate; the rest are the in-distribution check."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        mask[members[: max(1, len(members) // 2)]] = True
    return mask


def read_logits(path) -> dict[str, np.ndarray]:
    """A run's ``logits.npz`` (:func:`medtune.evaluate.write_logits`), as arrays in memory; read here,
    where the tables job reads it, so that the tables need not import torch."""
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}
