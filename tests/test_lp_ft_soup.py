"""LP-FT and model soups: LP-FT starts from the linear probe's own fit and takes plain SGD steps on
the image tower and that head (a step re-typed here with torch.optim.SGD); soups average as the
paper's recipes say, on cases worked by hand."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.data.synthetic import SyntheticSpec, generate
from medtune.heads import FitData
from medtune.methods import linear_probe, lp_ft, soup
from medtune.models import load_backbone
from medtune.preprocess import normalize, resize_crop, to_device_batch

CPU = torch.device("cpu")
PROBE = {"C_range": [0.1, 10.0], "steps_per_decade": 1}


@pytest.fixture(scope="module")
def data():
    images, rows = generate(SyntheticSpec(sizes={"train": 24, "val": 12}, image_size=32, seed=3))
    return images, rows[rows.split == "train"].sort_values("index"), rows[rows.split == "val"]


def tiny():
    return load_backbone("tiny", {"arch": "medtune-tiny", "init_seed": 0})


def encode(backbone, images, idx):
    x = normalize(resize_crop(to_device_batch(images[np.sort(idx)], CPU), backbone.image_size), backbone.mean, backbone.std)
    return F.normalize(backbone.model.encode_image(x).float(), dim=-1)


def test_lp_ft_starts_from_the_linear_probe_and_takes_sgd_steps_on_tower_and_head(data):
    images, train, val = data
    backbone = tiny()
    reference = copy.deepcopy(backbone.model)
    params = {"probe": PROBE, "epochs": 1, "batch_size": 64, "lr": 0.05, "keep": "last"}
    pretrained, kept, info = lp_ft.tune(backbone, images, train, val, params, {"templates": ["{c}"]}, seed=0, device=CPU, progress=False)

    # the probe: linear_probe.fit on the pretrained tower's normalised features
    with torch.no_grad():
        train_x = encode(backbone_like(reference), images, train["index"].to_numpy()).numpy()
        val_x = encode(backbone_like(reference), images, val["index"].to_numpy()).numpy()
    n_classes = int(max(train["label"].max(), val["label"].max())) + 1
    fitted, _ = linear_probe.fit(FitData(train_x, train["label"].to_numpy(), val_x, val["label"].to_numpy(),
                                         np.zeros((n_classes, train_x.shape[1]), np.float32), 1.0),
                                 {**linear_probe.SPEC["defaults"], **PROBE}, 0)
    torch.testing.assert_close(pretrained[lp_ft.HEAD + "weight"], fitted["weight"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pretrained[lp_ft.HEAD + "bias"], fitted["bias"], rtol=1e-4, atol=1e-5)

    # one epoch, one batch of all 24 images: one SGD step (momentum's first step is the gradient)
    head = torch.nn.Linear(train_x.shape[1], n_classes)
    head.weight.data.copy_(fitted["weight"])
    head.bias.data.copy_(fitted["bias"])
    reference.train()
    optimizer = torch.optim.SGD(list(reference.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    loss = F.cross_entropy(head(encode(backbone_like(reference), images, train["index"].to_numpy())), torch.as_tensor(train["label"].to_numpy()))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(kept[key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(kept[lp_ft.HEAD + "weight"], head.weight.detach(), rtol=1e-4, atol=1e-6)
    # the text tower is never run: it stays as pretrained
    text_keys = [k for k in kept if k.startswith(("transformer.", "token_embedding", "ln_final", "text_projection"))]
    assert text_keys and all(torch.equal(kept[k], pretrained[k]) for k in text_keys)
    assert info["steps"] == 1 and info["chosen_epoch"] == 1
    # what evaluation builds: the tower's weights and the linear head apart
    model, head_state = lp_ft.split_head(kept)
    assert set(model) == set(reference.state_dict()) and head_state["module"] == "medtune.methods.lp_ft"


def backbone_like(model):
    backbone = tiny()
    backbone.model = model
    return backbone


def test_uniform_soup_is_the_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 3.0]), "steps": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 5.0]), "steps": torch.tensor(9)}
    out = soup.average([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["steps"]) == 7
    with pytest.raises(ValueError, match="one architecture"):
        soup.average([a, {"w": a["w"]}])


def test_greedy_soup_by_hand():
    # scalar "models" 1, 3, 10; validation accuracy -(w - 2)^2: own accuracies -1, -1, -64
    states = [{"w": torch.tensor(float(v))} for v in (1, 3, 10)]
    accuracy = lambda s: -float((s["w"] - 2) ** 2)  # noqa: E731
    kept, best, steps = soup.greedy(states, accuracy, [accuracy(s) for s in states])
    # start with ingredient 0 (tied with 1, first given); 1 joins: mean 2, accuracy 0 >= -1;
    # 2 would make the mean 14/3, accuracy -(8/3)^2 < 0: left out
    assert kept == [0, 1] and best == 0.0
    assert [(s["ingredient"], s["joined"]) for s in steps] == [(0, True), (1, True), (2, False)]
    assert steps[2]["accuracy"] == pytest.approx(-(14 / 3 - 2) ** 2)
    # an ingredient that leaves the accuracy as it is joins (>=, the paper), not under the public code's >
    flat = [{"w": torch.tensor(2.0)}, {"w": torch.tensor(2.0)}]
    assert soup.greedy(flat, accuracy, [0.0, 0.0])[0] == [0, 1]
    assert soup.greedy(flat, accuracy, [0.0, 0.0], join_if="better")[0] == [0]
