"""LP++ against its public code (FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py``), the
training loop re-typed here from upstream with torch.optim.SGD, an nn.Linear and an alpha whose
gradient is never zeroed, and the step sizes worked by hand on a case small enough to check."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh

from medtune.heads import FitData, build_head, fit, predict


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def problem(n_per_class=4, n_classes=3, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    centres = np.eye(n_classes, dim) * 2
    x = unit(centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    vy = np.arange(n_classes).repeat(5)
    vx = unit(centres[vy] + rng.normal(size=(len(vy), dim))).astype(np.float32)
    text = unit(centres + 0.8 * rng.normal(size=(n_classes, dim))).astype(np.float32)
    return FitData(x, y, vx, vy, text, 100.0)


def upstream_lp_plus_plus(data, shots, epochs, seed):
    """``LinearProbe_P2.forward`` of the public code (case 2), its helpers inlined, on CPU in float32;
    returns the weights, bias and alpha of the epoch it would test with."""
    torch.manual_seed(seed)
    features = torch.tensor(data.train_features)
    labels = torch.tensor(data.train_labels)
    val_features, val_labels = torch.tensor(data.val_features), torch.tensor(data.val_labels)
    text_weights = torch.tensor(data.class_text).T  # upstream: d x K
    n_classes = int(features.shape[0] / shots)
    one_hot = F.one_hot(labels, n_classes).float()
    centroids = one_hot.T @ features  # compute_centroids: the division is commented out upstream
    classifier = torch.nn.Linear(features.shape[1], n_classes, bias=True)
    classifier.weight.data = centroids
    lr_temp = (4 * features.shape[0]) / max(eigh((features.T @ features).numpy())[0])  # calculate_lr_w
    z = features @ text_weights  # calculate_init_alpha
    alpha_tilde = ((one_hot * z) / one_hot.sum(0, keepdim=True)).sum(0)
    alpha_tilde = alpha_tilde.double() * shots
    final_init_alpha_mean = torch.mean(250 / shots * alpha_tilde)
    alpha_vec = torch.autograd.Variable(final_init_alpha_mean * torch.ones(1, n_classes).float(), requires_grad=True)
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(z, 2), dim=0)) * 4)  # calculate_lr_alpha
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, kept = 0.0, None
    for epoch in range(epochs):
        vision_logits = classifier(features)
        text_logits = features @ text_weights
        logits = vision_logits + torch.ones(features.shape[0], 1) @ alpha_vec * text_logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        logits_val = classifier(val_features) + torch.ones(val_features.shape[0], 1) @ alpha_vec * (val_features @ text_weights)
        acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
        if acc_val >= best_acc:
            best_acc = acc_val
            kept = (classifier.weight.detach().clone(), classifier.bias.detach().clone(), alpha_vec.detach().clone()[0])
    return kept


@pytest.mark.parametrize("epochs", [9, 10, 35])
def test_lp_plus_plus_takes_the_public_codes_steps(epochs):
    data = problem()
    state, info = fit("lp_plus_plus", data, {"epochs": epochs}, seed=3)
    weight, bias, alpha = upstream_lp_plus_plus(data, shots=4, epochs=epochs, seed=3)
    torch.testing.assert_close(state["weight"], weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["bias"], bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["alpha"], alpha, rtol=1e-5, atol=1e-5)
    # alpha first moves at the 10th epoch
    moved = not torch.equal(state["alpha"], torch.full_like(state["alpha"], info["alpha_init"]))
    assert moved == (info["best_epoch"] >= 10)


def test_lp_plus_plus_step_sizes_and_start_by_hand():
    # two classes, one image each, d = 2, T = I: F T' = F = [[1, 0], [0.6, 0.8]]
    f = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    data = FitData(f, np.array([0, 1]), f, np.array([0, 1]), np.eye(2, dtype=np.float32), 100.0)
    state, info = fit("lp_plus_plus", data, {"epochs": 1}, seed=0)
    # F'F = [[1.36, 0.48], [0.48, 0.64]]: trace 2, determinant 0.64, eigenvalues 1 -+ 0.6
    assert info["lr_w"] == pytest.approx(4 * 2 / 1.6)
    # column sums of (F T')^2: (1 + 0.36, 0 + 0.64); the largest is 1.36
    assert info["lr_alpha"] == pytest.approx(2 / (4 * 1.36))
    # each image's similarity to its own class prompt: 1 and 0.8, mean 0.9, times 250
    assert info["alpha_init"] == pytest.approx(225.0)
    # the histology study's rule: ln(k + 1) x 5 with k = 1 image per class
    _, shots = fit("lp_plus_plus", data, {"epochs": 1, "w_step": "shots"}, seed=0)
    assert shots["lr_w"] == pytest.approx(math.log(2) * 5)


def test_lp_plus_plus_head_is_the_blend_it_learned():
    data = problem(seed=1)
    state, _ = fit("lp_plus_plus", data, {"epochs": 20}, seed=0)
    f = data.val_features.astype(np.float64)
    w, b, a = (state[k].double().numpy() for k in ("weight", "bias", "alpha"))
    expected = f @ w.T + b + a * (f @ data.class_text.astype(np.float64).T)
    np.testing.assert_allclose(predict(build_head(state), data.val_features), expected, rtol=1e-4, atol=1e-4)
