"""kNN, SimpleShot, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F against independent references:
scikit-learn, the published code's loops transcribed, and cases worked by hand."""

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from medtune.heads import FitData, build_head, fit, load_head, predict
from medtune.io import save_torch
from medtune.metrics import softmax
from medtune.methods import _features, clip_adapter, knn, simpleshot, tip_adapter, tip_adapter_f


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def blobs(n, n_classes=3, dim=8, seed=0, spread=1.0):
    """Unit features of ``n_classes`` noisy clusters, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = 2 * np.eye(n_classes, dim)
    return unit(centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def fit_data(n_train=60, n_val=30, n_classes=3, dim=8, seed=0, spread=1.0):
    x, y = blobs(n_train, n_classes, dim, seed, spread)
    vx, vy = blobs(n_val, n_classes, dim, seed + 100, spread)
    return FitData(x, y, vx, vy, np.eye(n_classes, dim, dtype=np.float32), 10.0)


def cl2n(x, mean):
    """Centre by the training mean, then L2-normalise (numpy, float64)."""
    return unit(np.asarray(x, dtype=np.float64) - mean)


# ---------------------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("k", [1, 7, 20])
def test_knn_predicts_as_scikit_learn_on_the_same_normalised_features(k):
    data = fit_data(n_train=90, seed=k)
    test_x, _ = blobs(50, seed=k + 1)
    state, info = fit("knn", data, {"k": k}, seed=0)
    logits = predict(build_head(state), test_x)

    mean = data.train_features.astype(np.float64).mean(0)
    reference = KNeighborsClassifier(n_neighbors=k).fit(cl2n(data.train_features, mean), data.train_labels)
    assert (logits.argmax(1) == reference.predict(cl2n(test_x, mean))).all()
    # the softmax of the logits is the vote share, scikit-learn's predict_proba (to the 1e-6 floor)
    np.testing.assert_allclose(softmax(logits.astype(np.float64)), reference.predict_proba(cl2n(test_x, mean)), atol=1e-5)
    assert info["trainable_parameters"] == 0 and info["voters"] == k


def test_knn_breaks_ties_by_training_order_then_lower_class():
    # two identical training features with different labels: equally similar to any query
    train = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    labels = np.array([2, 1, 0, 0])
    data = FitData(train, labels, train[:0], labels[:0], np.eye(3, dtype=np.float32), 1.0)
    query = np.array([[1, 0.1, 0.1]], dtype=np.float32)  # nearest to the two copies
    one, _ = fit("knn", data, {"k": 1}, seed=0)
    assert predict(build_head(one), query).argmax(1).tolist() == [2]  # the earlier copy's label
    two, _ = fit("knn", data, {"k": 2}, seed=0)
    logits = predict(build_head(two), query)
    assert logits.argmax(1).tolist() == [1]  # one vote each for classes 1 and 2: the lower wins
    np.testing.assert_allclose(logits[0], np.log([1e-6, 0.5, 0.5]), rtol=1e-6)


def test_knn_with_fewer_training_images_than_k_lets_all_vote():
    data = fit_data(n_train=5)
    state, info = fit("knn", data, {"k": 20}, seed=0)
    logits = predict(build_head(state), data.val_features)
    counts = np.bincount(data.train_labels, minlength=3) / 5
    expected = np.log(np.maximum(counts, 1e-6))
    np.testing.assert_allclose(logits, np.broadcast_to(expected, logits.shape), rtol=1e-6)
    assert info["voters"] == 5


@pytest.mark.parametrize("levels", [3, 40, 10_000])
def test_knn_votes_are_the_k_most_similar_earliest_first_by_hand(levels):
    """Votes against a per-row reference that sorts the columns by similarity, then column order,
    and counts the labels of the first k: similarities on few levels make rows where more columns
    tie with the k-th than places are left (and rows where they do not)."""
    rng = np.random.default_rng(levels)
    n_rows, n_cols, n_classes = 60, 50, 4
    similarity = rng.integers(0, levels, size=(n_rows, n_cols)).astype(np.float32) / levels
    labels = rng.integers(0, n_classes, n_cols)
    for k in (1, 5, 20, n_cols, n_cols + 3):
        votes = knn.neighbour_votes(torch.from_numpy(similarity), torch.from_numpy(labels), n_classes, k).numpy()
        expected = np.zeros((n_rows, n_classes), np.float32)
        for r in range(n_rows):
            order = sorted(range(n_cols), key=lambda c: (-similarity[r, c], c))[:k]
            np.add.at(expected[r], labels[order], 1)
        np.testing.assert_array_equal(votes, expected)


def test_knn_scores_the_same_in_small_blocks(monkeypatch):
    data = fit_data(n_train=80, seed=3)
    head = build_head(fit("knn", data, {"k": 9}, seed=0)[0])
    whole = predict(head, data.val_features)
    monkeypatch.setattr(knn, "row_blocks", lambda rows, cols: _features.row_blocks(rows, cols, budget=3 * cols))
    np.testing.assert_array_equal(predict(head, data.val_features), whole)


# --------------------------------------------------------------------------------- SimpleShot


def test_simpleshot_by_hand():
    # mean (2, 1); centred and normalised: (-1,-1)/√2, (1,-1)/√2 (class 0) and (-1,1)/√2, (1,1)/√2
    # (class 1); prototypes (0, -1/√2) and (0, 1/√2). The query (2, 3) centres to (0, 2), unit (0, 1):
    # distances 1 + 1/√2 and 1 - 1/√2. Class 2 has no training image.
    train = np.array([[1, 0], [3, 0], [1, 2], [3, 2]], dtype=np.float32)
    data = FitData(train, np.array([0, 0, 1, 1]), train[:0], np.array([], dtype=int), np.eye(3, 2, dtype=np.float32), 1.0)
    state, info = fit("simpleshot", data, {}, seed=0)
    logits = predict(build_head(state), np.array([[2, 3]], dtype=np.float32))
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(logits[0], [-(1 + r), -(1 - r), simpleshot.ABSENT], rtol=1e-6)
    assert info["classes_with_prototype"] == 2 and info["trainable_parameters"] == 0


def test_simpleshot_is_the_nearest_class_mean_of_cl2n_features():
    data = fit_data(n_train=70, seed=5)
    test_x, _ = blobs(40, seed=6)
    logits = predict(build_head(fit("simpleshot", data, {}, seed=0)[0]), test_x)
    mean = data.train_features.astype(np.float64).mean(0)
    train, query = cl2n(data.train_features, mean), cl2n(test_x, mean)
    prototypes = np.stack([train[data.train_labels == c].mean(0) for c in range(3)])
    distances = np.array([[np.linalg.norm(q - p) for p in prototypes] for q in query])
    np.testing.assert_allclose(logits, -distances, atol=1e-5)


# ------------------------------------------------------------------------------- CLIP-Adapter


def adapter_head(ratio=0.2):
    text = np.array([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    head = clip_adapter.CLIPAdapterHead(4, 4, ratio, torch.tensor(text), 10.0)
    with torch.no_grad():
        head.adapter[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0]]))  # 4 -> 1
        head.adapter[2].weight.copy_(torch.tensor([[1.0], [0.0], [2.0], [0.0]]))  # 1 -> 4
    return head.eval()


def test_clip_adapter_residual_mix_by_hand():
    f = np.array([[0.5, 0.1, 0.2, 0.3]], dtype=np.float32)
    # W1 f = 0.4 -> relu 0.4 -> W2 -> (0.4, 0, 0.8, 0) -> relu; 0.2 of it + 0.8 f = (0.48, 0.08, 0.32, 0.24)
    mixed = np.array([0.48, 0.08, 0.32, 0.24])
    expected = 10.0 * unit(mixed) @ np.array([[1, 0, 0, 0], [0, 0, 1, 0]]).T
    np.testing.assert_allclose(predict(adapter_head(), f)[0], expected, rtol=1e-5)
    # W1 g < 0: the bottleneck gives nothing and the logits are zero-shot CLIP's of g
    g = np.array([[0.1, 0.5, 0.2, 0.3]], dtype=np.float32)
    np.testing.assert_allclose(predict(adapter_head(), g)[0], 10.0 * unit(g[0])[[0, 2]], rtol=1e-5)
    # mixed before normalising, so a raw feature scores as its normalised one (no bias, ReLU)
    np.testing.assert_allclose(predict(adapter_head(), 7 * f), predict(adapter_head(), f), rtol=1e-5)
    # ratio 0: zero-shot CLIP
    np.testing.assert_allclose(predict(adapter_head(0.0), f)[0], 10.0 * unit(f[0])[[0, 2]], rtol=1e-5)


def test_clip_adapter_trains_the_bottleneck_only_and_is_seeded():
    data = fit_data(n_train=64, dim=16, spread=1.5)
    params = {"epochs": 4, "batch_size": 16, "lr": 0.05}
    state, info = fit("clip_adapter", data, params, seed=2)
    again, _ = fit("clip_adapter", data, params, seed=2)
    other, _ = fit("clip_adapter", data, params, seed=3)
    for key, weight in state["adapter"].items():
        torch.testing.assert_close(weight, again["adapter"][key], rtol=0, atol=0)
    assert not torch.equal(state["adapter"]["0.weight"], other["adapter"]["0.weight"])
    assert [tuple(w.shape) for w in state["adapter"].values()] == [(4, 16), (16, 4)]
    assert info["trainable_parameters"] == 2 * 16 * 4 and info["steps"] == 4 * 4
    assert info["val_accuracy"] == max(info["val_accuracy_by_epoch"])
    np.testing.assert_array_equal(state["class_text"].numpy(), data.class_text)


# ------------------------------------------------------------------------------- Tip-Adapter


def test_tip_adapter_affinity_and_logits_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    head = tip_adapter.TipAdapterHead(keys, torch.tensor([0, 1]), 2, torch.eye(2), beta=2.0, alpha=3.0, text_scale=100.0)
    # f.K = (0.6, 0.8); affinity exp(-2 (1 - 0.6)) = e^-0.8, exp(-2 (1 - 0.8)) = e^-0.4;
    # logits = 100 f.W + 3 A.L = (60 + 3 e^-0.8, 80 + 3 e^-0.4)
    logits = predict(head, np.array([[0.6, 0.8]], dtype=np.float32))
    np.testing.assert_allclose(logits[0], [60 + 3 * math.exp(-0.8), 80 + 3 * math.exp(-0.4)], rtol=1e-6)
    # test features are normalised first
    np.testing.assert_allclose(predict(head, np.array([[3.0, 4.0]], dtype=np.float32)), logits, rtol=1e-6)


def test_tip_adapter_grid_is_the_public_codes():
    betas = tip_adapter.grid(7, 200)
    assert len(betas) == 200 and betas[0] == 0.1 and betas[1] == pytest.approx(0.1 + 6.9 / 200)
    assert betas[-1] == pytest.approx(199 * 6.9 / 200 + 0.1) and betas[-1] < 7


def upstream_search_hp(scale, step, cache_keys, cache_values, features, labels, clip_weights):
    """Tip-Adapter's ``search_hp`` (utils.py), loop for loop, on numpy: keys are d x N, weights d x C."""
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ cache_keys
            cache_logits = np.exp((-1) * (beta - beta * affinity)) @ cache_values
            clip_logits = 100.0 * features @ clip_weights
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100 * (tip_logits.argmax(1) == labels).mean()
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc / 100


def test_tip_adapter_search_finds_the_public_codes_setting():
    # class prompts that barely tell the classes apart, so the cache matters
    data = fit_data(n_train=40, n_val=60, dim=6, seed=11)
    data.class_text = unit(np.eye(3, 6) + 3.0).astype(np.float32)
    params = {"search_scale": [9.0, 4.0], "search_step": [30, 12]}
    state, info = fit("tip_adapter", data, params, seed=0)
    assert info["beta"] > 1 and info["alpha"] > 1  # inside the grid, not its first setting
    keys, values = unit(data.train_features), np.eye(3)[data.train_labels]
    beta, alpha, acc = upstream_search_hp(
        params["search_scale"], params["search_step"], keys.T, values, unit(data.val_features), data.val_labels, data.class_text.T.astype(np.float64)
    )
    assert (state["beta"], info["alpha"], info["val_accuracy"]) == (pytest.approx(beta), pytest.approx(alpha), pytest.approx(acc))
    assert info["trainable_parameters"] == 0 and info["cache_size"] == 40


def test_tip_adapter_without_search_keeps_the_initial_setting():
    state, info = fit("tip_adapter", fit_data(), {"search": False, "init_beta": 5.5, "init_alpha": 1.17}, seed=0)
    assert (state["beta"], state["alpha"]) == (5.5, 1.17) and info["val_accuracy"] is None


def test_tip_adapter_f_fine_tunes_the_keys():
    data = fit_data(n_train=48, n_val=40, dim=6, spread=2.0, seed=4)
    params = {"epochs": 5, "batch_size": 16, "lr": 0.01, "search": False}
    state, info = fit("tip_adapter_f", data, params, seed=1)
    again, _ = fit("tip_adapter_f", data, params, seed=1)
    torch.testing.assert_close(state["keys"], again["keys"], rtol=0, atol=0)
    initial = torch.tensor(unit(data.train_features), dtype=torch.float32)
    assert state["keys"].shape == initial.shape and not torch.allclose(state["keys"], initial)
    assert info["trainable_parameters"] == 48 * 6 and info["steps"] == 5 * 3
    assert info["train_loss_by_epoch"][-1] < info["train_loss_by_epoch"][0]
    # the kept epoch is the first of the best validation accuracy, scored at the initial beta and alpha
    accuracies = info["val_accuracy_by_epoch"]
    assert info["best_epoch"] == accuracies.index(max(accuracies)) + 1 and info["val_accuracy"] == max(accuracies)
    head = build_head(state)
    assert (head.beta, head.alpha) == (1.0, 1.0)
    # the head scores with the trained keys as stored (no longer unit vectors)
    f = torch.nn.functional.normalize(torch.tensor(data.val_features), dim=-1)
    expected = 100 * f @ state["class_text"].T + torch.exp(-(1 - f @ state["keys"].T)) @ torch.eye(3)[state["labels"]]
    np.testing.assert_allclose(predict(head, data.val_features), expected.numpy(), rtol=1e-5)


def test_tip_adapter_f_searches_beta_and_alpha_with_the_trained_keys():
    data = fit_data(n_train=30, n_val=30, dim=6, spread=2.0, seed=8)
    params = {"epochs": 2, "batch_size": 16, "search_scale": [6.0, 3.0], "search_step": [12, 6]}
    state, info = fit("tip_adapter_f", data, params, seed=0)
    beta, alpha, acc = upstream_search_hp(
        params["search_scale"], params["search_step"], state["keys"].double().numpy().T, np.eye(3)[data.train_labels],
        unit(data.val_features), data.val_labels, data.class_text.T.astype(np.float64),
    )
    assert (info["beta"], info["alpha"]) == (pytest.approx(beta), pytest.approx(alpha)) and info["val_accuracy"] == pytest.approx(acc)
    assert info["alpha"] > 0.1


# ------------------------------------------------------------------------------ all of them


@pytest.mark.parametrize("method, params", [
    ("knn", {"k": 3}), ("simpleshot", {}), ("clip_adapter", {"epochs": 2}), ("tip_adapter", {"search_step": [5, 5]}),
    ("tip_adapter_f", {"epochs": 2, "search_step": [5, 5]}),
])
def test_heads_save_as_plain_tensors_and_reload(tmp_path, method, params):
    data = fit_data()
    state, _ = fit(method, data, params, seed=0)
    save_torch(state, tmp_path / "head.pt")
    reloaded = load_head(tmp_path / "head.pt")  # weights_only=True
    np.testing.assert_allclose(predict(reloaded, data.val_features), predict(build_head(state), data.val_features), rtol=1e-6)
    assert predict(reloaded, data.val_features).shape == (30, 3)


@pytest.mark.parametrize("method", ["knn", "simpleshot", "clip_adapter", "tip_adapter", "tip_adapter_f"])
def test_a_fit_imports_neither_dynamo_nor_scikit_learn(method):
    """Start-up: the methods' modules and fits import neither scikit-learn nor scipy, and step
    without torch.optim's optimizer classes, which import torch._dynamo (seconds a job)."""
    import subprocess
    import sys

    code = f"""
import sys, numpy as np
from medtune.heads import FitData, fit
x = np.eye(8, dtype=np.float32)[np.arange(32) % 8]
y = np.arange(32) % 2
fit({method!r}, FitData(x, y, x, y, np.eye(2, 8, dtype=np.float32), 10.0),
    {{"epochs": 2, "batch_size": 8, "search_step": [4, 4], "k": 3}}, 0)
print(sorted(m for m in ("torch._dynamo", "sklearn", "scipy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
