"""CLAP against its public code (jusiro/CLAP ``trainers/adapters.py``): the linear probe, the
class-adaptive penalty and Dassl's optimiser re-typed here with torch.optim.SGD, and the
multipliers worked by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.heads import FitData, build_head, fit, predict


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def problem(n=9, n_classes=3, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = np.eye(n_classes, dim) * 1.5
    x = unit(centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    text = unit(centres + rng.normal(size=(n_classes, dim))).astype(np.float32)
    return FitData(x, y, x[:3], y[:3], text, 20.0)


def upstream_clap(data, epochs, norm, constraint="l2", lr=0.1):
    """``AdapterMethod`` (ZS init, l2 constraint), ``forward_lp`` and ``forward_backward`` of the
    public code, one batch per epoch (fewer than 256 images), Dassl's SGD (momentum 0.9, weight
    decay 0) and its ConstantWarmupScheduler(1 epoch at 1e-5) around CosineAnnealingLR(epochs)."""
    features, labels = torch.tensor(data.train_features), torch.tensor(data.train_labels)
    base_text_features = norm * torch.tensor(data.class_text)
    logit_scale = data.logit_scale  # upstream: self.logit_scale.exp()

    def forward_lp(features, prototypes):
        image_features_norm = features / features.norm(dim=-1, keepdim=True)
        prototypes_norm = prototypes / prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * logit_scale

    prototypes = torch.nn.Parameter(base_text_features.clone())
    logits_ds = forward_lp(features, base_text_features)
    labels_one_hot = F.one_hot(labels)
    performance = torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(torch.float32)) / labels_one_hot.sum(0)
    alpha_constraint = torch.ones(3) if constraint == "balanced" else performance
    optim = torch.optim.SGD([prototypes], lr=lr, momentum=0.9, weight_decay=0.0, dampening=0, nesterov=False)
    for epoch in range(epochs):
        rate = 1e-5 if epoch == 0 else lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        for group in optim.param_groups:
            group["lr"] = rate
        output = forward_lp(features, prototypes)
        loss_ce = F.cross_entropy(output, labels)
        disimilitude = (prototypes - base_text_features.clone()).pow(2).sum(-1)
        loss = loss_ce + torch.mean(alpha_constraint * disimilitude)
        optim.zero_grad()
        loss.backward()
        optim.step()
    return prototypes.detach(), performance


@pytest.mark.parametrize("norm", [1.0, 8.0])
@pytest.mark.parametrize("penalty,constraint", [("adaptive", "l2"), ("balanced", "balanced")])
def test_clap_takes_the_public_codes_steps(norm, penalty, constraint):
    data = problem()
    state, info = fit("clap", data, {"epochs": 12, "prototype_norm": norm, "penalty": penalty}, seed=0)
    prototypes, performance = upstream_clap(data, 12, norm, constraint)
    torch.testing.assert_close(state["class_text"], F.normalize(prototypes, dim=-1), rtol=1e-5, atol=1e-6)
    expected = performance if penalty == "adaptive" else torch.ones(3)
    np.testing.assert_allclose(info["multipliers"], expected.numpy(), rtol=1e-6)
    assert info["trainable_parameters"] == 3 * 5 and info["steps"] == 12


def test_clap_multipliers_by_hand():
    # two classes, two images each; zero-shot logits put class 0's images at p(0) = 0.9 and 0.5,
    # class 1's at p(1) = 0.2 and 0.6: lambda = (0.7, 0.4)
    from medtune.methods.clap import lagrangian_multipliers

    p = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.8, 0.2], [0.4, 0.6]])
    lam = lagrangian_multipliers(p.log(), torch.tensor([0, 0, 1, 1]), 2, "adaptive")
    torch.testing.assert_close(lam, torch.tensor([0.7, 0.4]))


def test_clap_batches_and_head():
    # 600 images, batch 256: two batches an epoch (the last 88 images dropped, Dassl's drop_last)
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(600, 4))).astype(np.float32)
    data = FitData(x, rng.integers(0, 2, 600), x[:10], np.zeros(10, int), unit(np.eye(2, 4)).astype(np.float32), 10.0)
    state, info = fit("clap", data, {"epochs": 3}, seed=1)
    assert info["steps"] == 6
    # the head is the zero-shot form with the trained prototypes
    expected = 10.0 * unit(x[:10]) @ state["class_text"].numpy().T
    np.testing.assert_allclose(predict(build_head(state), x[:10]), expected, rtol=1e-5, atol=1e-5)
