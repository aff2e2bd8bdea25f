"""TransCLIP against its public code (MaxZanella/transduction-for-vlms ``TransCLIP_solver/``), the
solver re-typed here for the CPU: sparse affinity matrix, Gaussian module, update_z/mu/sigma and
the outer loop as upstream writes them. Zero-shot is upstream's exactly; few-shot with the
affinity rows ordered as the assignments are (test images, then support), which upstream's
``build_affinity_matrix`` does not do (see the last test)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.heads import FitData, build_head, predict, refine
from medtune.methods import transclip as tc


# ---- the public code, re-typed (CPU) -------------------------------------------------------------


def up_build_affinity_matrix(query, support, n_neighbors=3, support_first=True):
    num_samples = query.size(0)
    if support is not None:
        labeled = support @ query.t()
        test = query @ query.t()
        affinity = torch.cat((labeled, test) if support_first else (test, labeled), dim=0)
        num_rows = num_samples + support.size(0)
    else:
        affinity = query @ query.T
        num_rows = num_samples
    knn_index = affinity.topk(n_neighbors + 1, -1, largest=True).indices[:, 1:]
    rows = torch.arange(num_rows).unsqueeze(1).repeat(1, n_neighbors).flatten()
    cols = knn_index.flatten()
    values = affinity[rows, cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size=(num_rows, num_samples))


def up_update_z(gmm_likelihood, y_hat, z, W, lambda_value, n_neighbors, labels=None, max_iter=5):
    if labels is not None:
        z = torch.cat((z.clone(), F.one_hot(labels).float()))
    num_samples = gmm_likelihood.size(0)
    for _ in range(max_iter):
        intermediate = gmm_likelihood.clone()
        intermediate += (50 / (n_neighbors * 2)) * (W.T @ z + (W @ z[0:num_samples, :])[0:num_samples, :])
        intermediate -= torch.max(intermediate, dim=1, keepdim=True)[0]
        intermediate = (y_hat ** lambda_value) * torch.exp(1 / 50 * intermediate)
        z[0:num_samples] = intermediate / torch.sum(intermediate, dim=1, keepdim=True)
    return z


def up_gmm(x, mu, std):
    return -0.5 * torch.einsum("ijk,ijk->ij", (x[:, None, :] - mu[None, :, 0, :]) ** 2, 1 / std[None, None, :])


def up_update_mu(gamma, query, z, support, labels):
    n_query = z.size(0)
    new_mu = torch.einsum("ij,ik->jk", (1 / n_query) * z, query)
    if support is not None:
        labeled = F.one_hot(labels).float()
        n_support = labeled.size(0)
        new_mu += torch.einsum("ij,ik->jk", (gamma * 50 / n_support) * labeled, support)
        new_mu /= (1 / n_query * torch.sum(z, dim=0).unsqueeze(-1) + gamma * 50 / n_support * torch.sum(labeled, dim=0).unsqueeze(-1))
    else:
        new_mu /= (1 / n_query * torch.sum(z, dim=0).unsqueeze(-1))
    new_mu = new_mu.unsqueeze(1)
    return new_mu / new_mu.norm(dim=-1, keepdim=True)


def up_update_sigma(gamma, query, z, mu, support, labels):
    n_query = z.size(0)
    std = (1 / n_query) * torch.einsum("ij,ijk->k", z, (query[:, None, :] - mu[None, :, 0, :]) ** 2)
    if support is not None and gamma > 0:
        labeled = F.one_hot(labels).float()
        n_support = labeled.size(0)
        std += (gamma * 50 / n_support) * torch.einsum("ij,ijk->k", labeled, (support[:, None, :] - mu[None, :, 0, :]) ** 2)
        std /= (1 / n_query * torch.sum(z) + gamma * 50 / n_support * torch.sum(labeled))
    else:
        std /= (1 / n_query * torch.sum(z))
    return std


def up_init_mu(K, d, z, query, support, labels):
    if support is not None:
        mu = (F.one_hot(labels).float().t() @ support).unsqueeze(1)
    else:
        mu = torch.zeros(K, 1, d)
        topk_indices = torch.topk(z, k=8, dim=0)[1]
        mask = torch.zeros_like(z).scatter_(0, topk_indices, 1)
        filtered_z = z * mask
        for c in range(K):
            class_indices = mask[:, c].nonzero().squeeze(1)
            combined = query[class_indices] * filtered_z[class_indices, c].unsqueeze(1)
            mu[c, 0, :] = combined[:8].mean(dim=0)
    return mu / mu.norm(dim=-1, keepdim=True)


def up_transclip(query, affinity, support=None, support_labels=None, val=None, val_labels=None, support_first=True, softmax=True):
    """TransCLIP_solver; ``init_z``: with ``softmax`` (zero-shot CLIP's logits, ``affinity``) y_hat and z
    are two softmaxes, else (``initial_predictions``, already probabilities) one tensor. Returns the
    z of the best γ."""
    K, d = affinity.shape[1], query.size(1)
    few_shot = support is not None
    lambda_value, gamma_list = (0.5, [0.002, 0.01, 0.02, 0.2]) if few_shot else (1, [0])
    neighbor_index = torch.argmax(val @ query.T, dim=1) if few_shot else None
    y_hat, z = (F.softmax(affinity, dim=1), F.softmax(affinity, dim=1)) if softmax else (affinity, affinity)
    mu = up_init_mu(K, d, z, query, support, support_labels)
    std = torch.eye(d).diag() * (1 / d)
    W = up_build_affinity_matrix(query, support, 3, support_first)
    best_val, best_z = -1, None
    for gamma in gamma_list:
        for k in range(11):
            z = up_update_z(up_gmm(query, mu, std), y_hat, z, W, lambda_value, 3, support_labels)[0:query.size(0)]
            if k == 10:
                if few_shot:
                    acc_val = float((z[neighbor_index].argmax(1) == val_labels).float().mean())
                    if acc_val > best_val:
                        best_val, best_z = acc_val, z.clone()
                else:
                    best_z = z
                break
            mu = up_update_mu(gamma, query, z, support, support_labels)
            std = up_update_sigma(gamma, query, z, mu, support, support_labels)
    return best_z


# ---- the cases ------------------------------------------------------------------------------------


def unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def clusters(n, n_classes=3, dim=10, seed=0, spread=0.9):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    centres = 2 * torch.eye(n_classes, dim)
    return unit(centres[labels] + spread * torch.randn(n, dim, generator=g)), labels


P = tc.SPEC["defaults"]


def test_zero_shot_transclip_is_the_public_solver():
    query, labels = clusters(60, seed=1)
    text = unit(torch.eye(3, 10) + 0.5 * torch.randn(3, 10, generator=torch.Generator().manual_seed(2)))
    y_hat = torch.softmax(100 * query @ text.T, dim=1)
    z, chosen = tc.transclip(query, y_hat, P)
    torch.testing.assert_close(z, up_transclip(query, 100 * query @ text.T), rtol=1e-4, atol=1e-5)
    assert chosen["gamma"] is None and chosen["lambda"] == 1.0
    # the refinement helps on clusters the text prototypes only roughly point at
    assert (z.argmax(1) == labels).float().mean() >= (y_hat.argmax(1) == labels).float().mean()


def test_few_shot_transclip_is_the_public_solver_with_rows_aligned():
    query, _ = clusters(45, seed=3)
    support, support_labels = clusters(9, seed=4)
    val, val_labels = clusters(6, seed=5)
    y_hat = torch.softmax(5 * query @ unit(torch.eye(3, 10)).T + torch.randn(45, 3, generator=torch.Generator().manual_seed(6)), dim=1)
    z, chosen = tc.transclip(query, y_hat, P, support, support_labels, val, val_labels)
    expected = up_transclip(query, y_hat, support, support_labels, val, val_labels, support_first=False, softmax=False)
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)
    assert chosen["lambda"] == 0.5 and chosen["gamma"] in P["gammas"]


def test_upstream_pairs_support_rows_with_test_assignments():
    """The finding behind the one departure: with |S| support rows stacked first in W but the
    support's one-hot rows last in z, upstream's Wᵀ z at a test image counts a support image's
    affinity against a *test* image's assignment."""
    query = unit(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]))
    support, labels = unit(torch.tensor([[1.0, 0.05]])), torch.tensor([0])
    W = up_build_affinity_matrix(query, support, n_neighbors=1)  # 5 x 4, row 0 the support image
    z = torch.cat([torch.tensor([[0.0, 1.0]] * 4), F.one_hot(labels, 2).float()])  # every test image says class 1
    upstream = W.T @ z  # row 0 of W (the support image) meets row 0 of z (a test image: class 1)
    index, value = tc.knn_graph(torch.cat([query, support]), query, 1)
    aligned = tc.propagate(z, index, value, 4) - (value[:4, :, None] * z[index[:4]]).sum(1)  # the Wᵀ z part alone
    # the support image's second-nearest test image is image 1: only the aligned sum carries its label there
    assert upstream[1, 0] == 0 and aligned[1, 0] > 0.9


def test_the_stage_head_refines_its_base_on_the_batch_it_gets(tmp_path):
    from medtune.methods import zeroshot

    query, labels = clusters(40, seed=7)
    text = unit(torch.eye(3, 10))
    base = {**zeroshot.state(text, 20.0), "module": "medtune.methods.zeroshot"}
    zero = FitData(np.zeros((0, 10), np.float32), np.zeros(0, int), np.zeros((0, 10), np.float32), np.zeros(0, int), text.numpy(), 20.0)
    state, info = refine("transclip", base, zero, {}, seed=0)
    logits = predict(build_head(state), query.numpy())
    z, _ = tc.transclip(query, torch.softmax(20.0 * query @ text.T, 1), P)
    np.testing.assert_allclose(np.exp(logits), z.numpy(), rtol=1e-5, atol=1e-6)
    assert info["trainable_parameters"] == 3 * 10 + 10
    # few-shot: the support is the base run's training images; at most min(4, shots) validation images a class
    support, support_labels = clusters(6, seed=8)  # 2 a class
    val, val_labels = clusters(30, seed=9)
    data = FitData(support.numpy(), support_labels.numpy(), val.numpy(), val_labels.numpy(), text.numpy(), 20.0)
    state, info = refine("transclip", base, data, {}, seed=0)
    assert info["validation_images"] == 3 * 2 and sorted(state["val_labels"].tolist()) == [0, 0, 1, 1, 2, 2]
    head = build_head(state)
    predict(head, query.numpy())
    assert head.last["gamma"] in P["gammas"]


def test_the_stage_refines_a_probe_on_a_backbone_without_text():
    """A vision-only backbone gives no class text: the stage takes the class count and width from
    the features, and its refined predictions agree with the public solver run on the probe's."""
    from medtune.heads import fit
    from medtune.methods import linear_probe

    support, support_labels = clusters(30, seed=8)
    val, val_labels = clusters(30, seed=9)
    query, _ = clusters(40, seed=7)
    data = FitData(support.numpy(), support_labels.numpy(), val.numpy(), val_labels.numpy(), n_classes=3)
    probe, _ = fit("linear_probe", data, {**linear_probe.SPEC["defaults"], "C_range": [0.1, 10.0], "steps_per_decade": 1}, seed=0)
    state, info = refine("transclip", {**probe, "module": "medtune.methods.linear_probe"}, data, {}, seed=0)
    assert info["trainable_parameters"] == 3 * 10 + 10
    refined = predict(build_head(state), query.numpy())
    assert refined.shape == (40, 3) and np.isfinite(refined).all()
