"""Retrieval metrics on feature sets small enough to rank by hand."""

import math

import numpy as np
import pytest
import torch

from medtune.retrieval import hit_all_at_k, precision_at_k, retrieval_metrics


def _angles(degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_hand_ranked_angles():
    # On the unit circle cosine similarity falls with angular distance, so ranks can be read off.
    features = _angles([0, 10, 20, 90, 100, 200])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # Top 2 per query:  0 -> 1,2 (0,0)   1 -> 0,2 (0,0)   2 -> 1,0 (0,0)
    #                   3 -> 4,2 (1,0)   4 -> 3,2 (1,0)   5 -> 4,3 (1,1) but 5 is class 2
    assert hit_all_at_k(features, labels, 2) == pytest.approx(3 / 6)
    assert precision_at_k(features, labels, 2) == pytest.approx((1 + 1 + 1 + 0.5 + 0.5 + 0) / 6)
    # K=1: 0->1, 1->0, 2->1, 3->4, 4->3 hit; 5->4 misses.
    assert retrieval_metrics(features, labels, ks=(1,)) == pytest.approx({"ha@1": 5 / 6, "p@1": 5 / 6})


def test_k_beyond_class_size_never_hits_all():
    # Every neighbour of the lone class-2 query and the class-1 pair is perfect as far as
    # it can be, but K=3 exceeds what their classes hold, so only class 0 scores.
    features = _angles([0, 5, 10, 15, 120, 125, 240])
    labels = [0, 0, 0, 0, 1, 1, 2]
    out = retrieval_metrics(features, labels, ks=(3,))
    assert out["ha@3"] == pytest.approx(4 / 7)
    # Class 1 queries get their partner plus two others; class 2 gets nothing right.
    assert out["p@3"] == pytest.approx((4 * 1 + 2 * (1 / 3) + 0) / 7)


def test_ties_go_to_lower_index():
    # Query 0 is orthogonal to all; 1, 2, 3 are identical. Every K=1 choice is a tie.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # Lower index first: 0->1 hit, 1->2 miss, 2->1 miss, 3->1 miss.
    # (Higher index first would give 0->3 miss, 1->3 miss, 2->3 hit, 3->2 hit: 0.5.)
    assert precision_at_k(features, labels, 1) == pytest.approx(0.25)
    assert hit_all_at_k(features, labels, 1) == pytest.approx(0.25)


def test_query_excluded_but_its_duplicate_counts_once():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # 0 -> 1 (dup, same class), 2      1 -> 0 (dup), 2
    # 2 -> 0, 1 (tied at 0.8), 3       3 -> 2, 0
    out = retrieval_metrics(features, labels, ks=(1, 2))
    assert out == pytest.approx({"ha@1": 0.75, "p@1": 0.75, "ha@2": 0.0, "p@2": (0.5 + 0.5 + 0 + 0.5) / 4})


def test_cosine_ignores_feature_norm():
    features = _angles([0, 10, 20, 90, 100, 200])
    labels = [0, 0, 0, 1, 1, 2]
    scales = torch.tensor([1.0, 3.0, 0.5, 2.0, 7.0, 0.1], dtype=torch.float64)[:, None]
    assert retrieval_metrics(features * scales, labels, ks=(1, 2)) == retrieval_metrics(features, labels, ks=(1, 2))


@pytest.mark.parametrize("k", [0, 4, 5])
def test_k_out_of_range_raises(k):
    features = torch.eye(4)
    with pytest.raises(ValueError, match=f"K={k}"):
        hit_all_at_k(features, [0, 0, 1, 1], k)
    with pytest.raises(ValueError, match=f"K={k}"):
        retrieval_metrics(features, [0, 0, 1, 1], ks=(1, k))


def test_largest_k_is_all_candidates():
    features = torch.eye(4)
    labels = [0, 0, 0, 0]
    assert retrieval_metrics(features, labels, ks=(3,)) == {"ha@3": 1.0, "p@3": 1.0}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(torch.eye(4), [0, 1, 2], ks=(1,))


def _reference(features, labels, ks):
    """Brute force: rank every candidate by (similarity to 9 places, index)."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = np.round(x @ x.T, 9)
    out = {}
    ha = {k: [] for k in ks}
    p = {k: [] for k in ks}
    for q in range(len(x)):
        order = sorted((c for c in range(len(x)) if c != q), key=lambda c: (-sims[q, c], c))
        for k in ks:
            same = [labels[c] == labels[q] for c in order[:k]]
            ha[k].append(all(same))
            p[k].append(np.mean(same))
    for k in ks:
        out[f"ha@{k}"] = float(np.mean(ha[k]))
        out[f"p@{k}"] = float(np.mean(p[k]))
    return out


def test_chunked_matches_unchunked_and_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=90)
    centres = rng.normal(size=(4, 8))
    features = centres[labels] + 0.9 * rng.normal(size=(90, 8))
    # Duplicated rows make exact ties that the chunk boundaries cut through.
    features[10:20] = features[0:10]
    features = features.astype(np.float32)
    ks = (1, 5, 10)
    expected = _reference(features.astype(np.float64), labels, ks)
    whole = retrieval_metrics(torch.from_numpy(features), torch.from_numpy(labels), ks=ks, chunk_size=1000)
    assert whole == pytest.approx(expected, abs=1e-12)
    for chunk in (1, 7, 64):
        assert retrieval_metrics(torch.from_numpy(features), torch.from_numpy(labels), ks=ks, chunk_size=chunk) == whole
    assert retrieval_metrics(features, labels, ks=ks) == whole  # numpy in, same answer
    assert retrieval_metrics(features, [f"class {c}" for c in labels], ks=ks) == whole


def test_default_ks():
    features = _angles([0, 10, 20, 30, 40, 50, 180, 190, 200, 210, 220, 230])
    labels = [0] * 6 + [1] * 6
    assert retrieval_metrics(features, labels) == {"ha@5": 1.0, "ha@10": 0.0, "p@5": 1.0, "p@10": 0.5}


def _zeroshot_head():
    from medtune.methods import zeroshot

    return zeroshot.build_head(zeroshot.state(torch.eye(2)[:, :2], 1.0))


def _test_rows(n):
    import pandas as pd

    labels = [i % 2 for i in range(n)]
    return pd.DataFrame({"label": labels, "group": ["g"] * n})


@pytest.mark.parametrize("n, defined", [(3, ()), (5, ()), (6, (5,)), (10, (5,)), (11, (5, 10))])
def test_evaluation_of_a_small_test_split_marks_the_ks_that_do_not_fit_undefined(n, defined, capsys):
    """A test split of n images has n - 1 candidates per query: K must be at most n - 1.
    Retrieval at the Ks that fit is scored as usual, the others are NaN, classification is
    unaffected, and the job log says why once."""
    from medtune.evaluate import RETRIEVAL_KS, evaluate_features

    rows = _test_rows(n)
    features = _angles([3.0 * i + 90.0 * (i % 2) for i in range(n)]).float().numpy()
    out = evaluate_features(_zeroshot_head(), {"clean": features, "blur-2": features}, rows, {"dataset": "d", "method": "zeroshot"})
    overall = out[(out["condition"] == "clean") & (out["group"] == "all")].set_index("metric")["value"]
    assert overall["accuracy"] == pytest.approx(1.0)  # the two classes sit on the two axes
    expected = _reference(features.astype(np.float64), rows["label"].to_numpy(), defined) if defined else {}
    for k in RETRIEVAL_KS:
        for name in ("ha", "p"):
            if k in defined:
                assert overall[f"{name}@{k}"] == pytest.approx(expected[f"{name}@{k}"], abs=1e-12)
            else:
                assert math.isnan(overall[f"{name}@{k}"])
    log = capsys.readouterr().out
    if len(defined) < len(RETRIEVAL_KS):
        assert log.count("medtune:") == 1  # once per run, not per condition
        assert f"test split has {n} images" in log and "K = " + ", ".join(str(k) for k in RETRIEVAL_KS if k not in defined) in log
    else:
        assert log == ""


def test_retrieval_examples_of_a_small_test_split_show_only_real_neighbours(monkeypatch, tmp_path):
    """Three test images: each query has two neighbours, never itself, and the spare columns stay empty."""
    import matplotlib

    matplotlib.use("Agg")
    from medtune.studies import pathclip

    drawn = {}
    monkeypatch.setattr(pathclip, "save", lambda fig, path: drawn.setdefault("fig", fig))
    images = np.stack([np.full((4, 4, 3), 60 * i, dtype=np.uint8) for i in range(3)])  # image i is all 60*i
    features = _angles([0, 10, 100]).numpy()
    pathclip.retrieval_examples(images, np.arange(3), np.array([0, 0, 1]), features, tmp_path / "r.png", k=5, n_queries=3)
    axes = np.array(drawn["fig"].axes).reshape(3, 6)
    for row, query in enumerate([0, 1, 2]):
        shown = [int(ax.images[0].get_array()[0, 0, 0]) // 60 for ax in axes[row] if ax.images]
        assert shown[0] == query and sorted(shown[1:]) == sorted({0, 1, 2} - {query})
        assert [ax.axison for ax in axes[row][3:]] == [False, False, False]
