"""PGD against a frozen encoder + head, checked against torchattacks' PGD re-typed (torchattacks 3.5.1,
``torchattacks/attacks/pgd.py``: PGD.forward) with the same random start, on a random tiny backbone.

torchattacks itself is not a test dependency: it pins requests ~= 2.25.1, which would downgrade
requests, urllib3 and idna under Snakemake. The loop below is its ``forward`` typed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medtune import attacks
from medtune.methods import knn, linear_probe, zeroshot
from medtune.models import freeze, load_backbone
from medtune.pgd import attack_logits, attacked_positions, classifier, pgd, radius


def torchattacks_pgd(model, images, labels, eps, alpha, steps):
    """torchattacks 3.5.1 PGD.forward, untargeted, random_start=True (model takes [0, 1] images)."""
    loss = nn.CrossEntropyLoss()
    images = images.clone().detach()
    adv_images = images.clone().detach()
    adv_images = adv_images + torch.empty_like(adv_images).uniform_(-eps, eps)
    adv_images = torch.clamp(adv_images, min=0, max=1).detach()
    for _ in range(steps):
        adv_images.requires_grad = True
        cost = loss(model(adv_images), labels)
        grad = torch.autograd.grad(cost, adv_images, retain_graph=False, create_graph=False)[0]
        adv_images = adv_images.detach() + alpha * grad.sign()
        delta = torch.clamp(adv_images - images, min=-eps, max=eps)
        adv_images = torch.clamp(images + delta, min=0, max=1).detach()
    return adv_images


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    backbone = load_backbone("tiny", {"arch": "medtune-tiny", "init_seed": 0})
    freeze(backbone.model)
    rng = np.random.default_rng(0)
    weight = torch.tensor(rng.normal(size=(3, 64)), dtype=torch.float32)
    head = linear_probe.build_head({"weight": weight * 5, "bias": torch.zeros(3)})
    for p in head.parameters():
        p.requires_grad_(False)
    images = torch.tensor(rng.uniform(0.1, 0.9, size=(6, 3, 64, 64)), dtype=torch.float32)
    with torch.no_grad():
        labels = classifier(backbone, head)(images).argmax(1)  # every image classified right: the attack must move it
    return backbone, head, images, labels


@pytest.mark.parametrize("eps, steps", [(1 / 255, 10), (4 / 255, 10), (1.5e-3, 5)])
def test_pgd_is_torchattacks_pgd_with_the_same_start(tiny, eps, steps):
    backbone, head, images, labels = tiny
    forward = classifier(backbone, head)
    step = 1 / 255 if steps == 10 else 1e-3
    torch.manual_seed(7)
    ours = pgd(forward, images, labels, radius(images, eps * 255, 1 / 255), radius(images, step * 255, 1 / 255), steps)
    torch.manual_seed(7)
    theirs = torchattacks_pgd(forward, images, labels, eps, step, steps)
    assert torch.equal(ours, theirs)
    assert (ours - images).abs().max() <= eps + 1e-7 and ours.min() >= 0 and ours.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(forward(ours), labels) > F.cross_entropy(forward(images), labels)


def test_radii_relative_to_each_channel_range_are_thunders(tiny):
    """THUNDER's ball is epsilon x (max - min) of each image's channel: on images whose every channel spans
    exactly 0..1 it is the absolute ball; elsewhere every channel keeps to its own radius."""
    backbone, head, images, labels = tiny
    forward = classifier(backbone, head)
    full = images.clone()
    full[:, :, 0, 0], full[:, :, -1, -1] = 0.0, 1.0  # every channel spans 0..1
    assert torch.equal(radius(full, 1.5e-3, None), torch.full((6, 3, 1, 1), 1.5e-3))
    torch.manual_seed(3)
    ours = pgd(forward, full, labels, radius(full, 1.5e-3, None), radius(full, 1e-3, None), 5)
    torch.manual_seed(3)
    assert torch.equal(ours, torchattacks_pgd(forward, full, labels, 1.5e-3, 1e-3, 5))
    # an image whose channels span less keeps inside its own, smaller ball
    narrow = 0.5 + 0.25 * (images - 0.5)
    bound = 1.5e-3 * (narrow.amax(dim=(2, 3), keepdim=True) - narrow.amin(dim=(2, 3), keepdim=True))
    adv = pgd(forward, narrow, labels, radius(narrow, 1.5e-3, None), radius(narrow, 1e-3, None), 5)
    assert ((adv - narrow).abs() <= bound + 1e-7).all()
    assert ((adv - narrow).abs() > 0.9 * bound).float().mean() > 0.5  # sign steps end on the ball's faces


def test_the_attack_runs_batched_and_is_seeded(tiny):
    backbone, head, images, labels = tiny
    store = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    settings = {"epsilons": [1, 4], "step": 1, "steps": 3, "unit": "1/255"}
    forward = classifier(backbone, head)
    y = labels.numpy()
    one = attack_logits(forward, store, np.arange(6), y, 64, settings, seed=1, device=torch.device("cpu"), batch_size=6)
    again = attack_logits(forward, store, np.arange(6), y, 64, settings, seed=1, device=torch.device("cpu"), batch_size=6)
    assert list(one) == [0, 1, 4] and all(np.array_equal(one[e], again[e]) for e in one)
    accuracy = {e: (logits.argmax(1) == y).mean() for e, logits in one.items()}
    assert accuracy[0] >= accuracy[1] >= accuracy[4] and accuracy[4] < accuracy[0]
    assert attacks.conditions("tecoa", settings) == ["pgd-tecoa-0", "pgd-tecoa-1", "pgd-tecoa-4"]
    assert attacked_positions(10, 4, 0).tolist() == sorted(attacked_positions(10, 4, 0).tolist()) and len(attacked_positions(10, None, 0)) == 10


def test_zero_shot_heads_are_attacked_and_knn_is_refused(tiny):
    backbone, _, images, labels = tiny
    text = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    head = zeroshot.build_head(zeroshot.state(text, 50.0))
    adv = pgd(classifier(backbone, head), images, labels, radius(images, 4, 1 / 255), radius(images, 1, 1 / 255), 2)
    assert (adv - images).abs().max() > 0
    votes = knn.build_head({"keys": F.normalize(torch.randn(9, 64), dim=-1), "labels": torch.arange(9) % 3,
                            "mean": torch.zeros(64), "k": 3, "n_classes": 3})
    with pytest.raises(ValueError, match="do not depend on the image differentiably"):
        pgd(classifier(backbone, votes), images, labels, radius(images, 4, 1 / 255), radius(images, 1, 1 / 255), 1)
