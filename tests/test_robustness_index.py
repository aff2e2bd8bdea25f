"""PathoROB's robustness index: a hand-worked case, and the public procedure re-typed with scikit-learn
and scipy (``pathorob/robustness_index/robustness_index.py`` select_optimal_k_value and
``robustness_index_utils.py`` evaluate_knn_accuracy, has_same_class, calculate_fractions, aggregate_stats)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mode
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import Normalizer

from medtune.robustness_index import index_job, k_grid, nearest_neighbours, pick_per_cell, robustness_index


def unit(degrees):
    return np.stack([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], axis=1)


def test_by_hand():
    """Four images on the unit circle: class 0 at 0 and 10 degrees (sites A, B), class 1 at 25 and 42 (A, B).
    Neighbours by angle: 0 -> 10, 25, 42; 10 -> 0, 25, 42; 25 -> 10, 42, 0; 42 -> 25, 10, 0.
    k = 1: SO, SO, OO, SO. k = 2 adds OS, OO, SO, OS. k = 3 adds OO, OS, OS, OO.
    RI(1) = 3/3, RI(2) = 4/6, RI(3) = 4/8; kNN balanced accuracy 0.75 at k = 1 (25 votes class 0), 0 at k = 3."""
    result = robustness_index(unit([0, 10, 25, 42]), np.array([0, 0, 1, 1]), np.array(["A", "B", "A", "B"]), n_bootstrap=50)
    assert nearest_neighbours(unit([0, 10, 25, 42]), 3).tolist() == [[1, 2, 3], [0, 2, 3], [1, 3, 0], [2, 1, 0]]
    assert result["k"] == [1, 3] and result["balanced_accuracy"] == [0.75, 0.0]
    assert result["k_opt"] == 1 and result["robustness_index"] == 1.0 and result["robustness_index_std"] == 0.0
    assert result["robustness_index_by_k"] == [1.0, 0.5]


def pathorob_ri(embeddings, labels, sites, k_max):
    """The public procedure: L2 normaliser, sklearn kNN on the set itself (the query filtered out, as its own
    slide's patches are), k grid, k_opt by balanced accuracy of the majority vote (scipy mode), and the
    cumulative SO / (SO + OS) over all images."""
    x = Normalizer(norm="l2").fit_transform(embeddings)
    ks = [k for k in [1, 3, 5, 7, 9] + list(np.arange(11, k_max, 10)) if k <= len(x) - 1]
    knn = KNeighborsClassifier(n_neighbors=ks[-1] + 1).fit(x, labels)
    _, indices = knn.kneighbors(x, return_distance=True)
    indices = np.array([[i for i in row if i != q][: ks[-1]] for q, row in enumerate(indices)])
    accuracies = [balanced_accuracy_score(labels, mode(labels[indices[:, :k]], axis=1).mode.flatten()) for k in ks]
    k_opt = ks[int(np.argmax(accuracies))]
    df = pd.DataFrame({"bio": labels, "conf": sites})
    same_bio = np.zeros_like(indices)
    same_conf = np.zeros_like(indices)
    for i in range(len(indices)):
        same_bio[i] = df.iloc[indices[i]]["bio"].values == df.iloc[i]["bio"]
        same_conf[i] = df.iloc[indices[i]]["conf"].values == df.iloc[i]["conf"]
    so = same_bio & (1 - same_conf)
    os_ = (1 - same_bio) & same_conf
    nr_so_cum, nr_os_cum = np.cumsum(so, axis=1).sum(axis=0), np.cumsum(os_, axis=1).sum(axis=0)
    return ks, accuracies, k_opt, nr_so_cum / (nr_so_cum + nr_os_cum)


def test_matches_pathorob_on_a_centre_confounded_set():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 3, n)
    sites = rng.choice(["A", "B", "C"], n)
    centre = {"A": 0, "B": 1, "C": 2}
    x = rng.normal(size=(n, 16)) + 1.5 * np.eye(16)[labels] + 1.0 * np.eye(16)[[3 + centre[s] for s in sites]]
    ks, accuracies, k_opt, curve = pathorob_ri(x, labels, sites, k_max=120)
    ours = robustness_index(x.astype(np.float32), labels, sites, k_max=120, n_bootstrap=200)
    assert ours["k"] == ks and ours["k_opt"] == k_opt
    np.testing.assert_allclose(ours["balanced_accuracy"], accuracies, atol=1e-12)
    np.testing.assert_allclose(ours["robustness_index_by_k"], curve[np.array(ks) - 1], atol=1e-12)
    assert ours["robustness_index"] == pytest.approx(curve[k_opt - 1])
    assert 0 < ours["robustness_index"] < 1 and 0 < ours["robustness_index_std"] < 0.1
    # more centre signal, less robustness
    stronger = robustness_index((x + 3.0 * np.eye(16)[[3 + centre[s] for s in sites]]).astype(np.float32), labels, sites, k_max=120, n_bootstrap=10)
    assert stronger["robustness_index"] < ours["robustness_index"]


def test_grid_cells_and_one_clear_line(tmp_path):
    assert k_grid(600)[:7] == [1, 3, 5, 7, 9, 11, 21] and k_grid(600)[-1] == 591 and k_grid(4) == [1, 3]
    labels, sites = np.array([0, 0, 0, 1, 1, 1, 0]), np.array(list("AABBBAA"))
    picked = pick_per_cell(labels, sites, 1, seed=0)
    assert sorted(zip(labels[picked], sites[picked])) == [(0, "A"), (0, "B"), (1, "A"), (1, "B")]
    with pytest.raises(ValueError, match=r"at least two sites; these 3 come from \['D'\]"):
        robustness_index(unit([0, 20, 40]), np.array([0, 1, 0]), np.array(["D"] * 3))
    # the job: one backbone's split, written as JSON with its identity
    features = tmp_path / "val"
    features.mkdir()
    np.save(features / "clean.npy", unit([0, 10, 25, 42]).astype(np.float32))
    pd.DataFrame({"index": range(6), "split": ["train", "val", "val", "val", "val", "test"], "label": [0, 0, 0, 1, 1, 1],
                  "label_name": list("aaabbb"), "caption": "", "group": "", "site": list("ZABABZ")}).to_csv(tmp_path / "samples.csv", index=False)
    settings = {"k_max": 600, "bootstrap": 20}
    index_job(features, tmp_path / "samples.csv", "val", settings, {"dataset": "d", "backbone": "b"}, tmp_path / "ri.json")
    written = json.loads((tmp_path / "ri.json").read_text())
    assert (written["dataset"], written["backbone"], written["split"], written["robustness_index"]) == ("d", "b", "val", 1.0)
    pd.read_csv(tmp_path / "samples.csv").drop(columns="site").to_csv(tmp_path / "nosite.csv", index=False)
    with pytest.raises(ValueError, match="has no site column"):
        index_job(features, tmp_path / "nosite.csv", "val", settings, {}, tmp_path / "x.json")
