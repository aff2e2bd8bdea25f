import numpy as np
import pytest
import torch

from medtune.contrastive import ContrastiveConfig, contrastive_loss, train_contrastive
from medtune.data.synthetic import SyntheticSpec, generate
from medtune.methods.finetune import finetune, training_texts, wise_ft
from medtune.models import load_backbone

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    images, rows = generate(SyntheticSpec(sizes={"train": 64, "val": 32}, image_size=32, seed=2))
    return images, rows[rows.split == "train"], rows[rows.split == "val"]


def tiny():
    return load_backbone("tiny", {"arch": "medtune-tiny", "init_seed": 0})


def test_a_few_steps_lower_the_contrastive_loss(data):
    images, train, _ = data
    backbone = tiny()
    idx, texts = train["index"].to_numpy(), train["caption"].tolist()
    before = contrastive_loss(backbone, images, idx, texts, CPU, batch_size=64)
    cfg = ContrastiveConfig(epochs=6, batch_size=64, lr=1e-3, warmup_steps=0, augment=False)
    train_contrastive(backbone, images, idx, texts, cfg, CPU, progress=False)
    after = contrastive_loss(backbone, images, idx, texts, CPU, batch_size=64)
    assert after < before - 0.1


def test_selection_keeps_the_pretrained_model_when_training_only_hurts(data):
    images, train, val = data
    backbone = tiny()
    # labels shuffled against the images: fitting them can only hurt the validation loss
    shuffled = train.assign(label_name=np.random.default_rng(0).permutation(train["label_name"].to_numpy()))
    params = {"text": "label", "epochs": 3, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0}
    pretrained, kept, info = finetune(backbone, images, shuffled, val, params, seed=0, device=CPU, progress=False)
    if info["chosen_epoch"] == 0:
        for key in pretrained:
            assert torch.equal(kept[key], pretrained[key])
    assert info["chosen_val_loss"] <= info["pretrained_val_loss"]
    assert info["chosen_val_loss"] == min([info["pretrained_val_loss"]] + [h["val_loss"] for h in info["history"]])


def test_pretrained_is_chosen_when_no_epoch_improves(data, monkeypatch):
    images, train, val = data
    backbone = tiny()
    losses = iter([1.0, 1.5, 2.0])  # pretrained, then two worse epochs
    monkeypatch.setattr("medtune.methods.finetune.contrastive_loss", lambda *a, **k: next(losses))
    params = {"text": "caption", "epochs": 2, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0}
    pretrained, kept, info = finetune(backbone, images, train, val, params, seed=0, device=CPU, progress=False)
    assert info["chosen_epoch"] == 0
    assert all(torch.equal(kept[k], pretrained[k]) for k in pretrained)


def test_wise_ft_endpoints_are_exact():
    torch.manual_seed(0)
    a = {"w": torch.randn(5, 3), "b": torch.randn(3), "steps": torch.tensor(3)}
    b = {"w": torch.randn(5, 3), "b": torch.randn(3), "steps": torch.tensor(7)}
    assert all(torch.equal(wise_ft(a, b, 0.0)[k], a[k]) for k in ("w", "b"))
    assert all(torch.equal(wise_ft(a, b, 1.0)[k], b[k]) for k in a)
    assert torch.allclose(wise_ft(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2)


def test_training_texts(data):
    _, train, _ = data
    assert training_texts(train, "caption", "{c}") == train["caption"].tolist()
    assert training_texts(train.head(2), "label", "a photo of {c}.") == [f"a photo of {c}." for c in train["label_name"].head(2)]
    with pytest.raises(ValueError, match="no caption"):
        training_texts(train.assign(caption=""), "caption", "{c}")


def test_resume_after_a_kill_gives_the_same_weights(data, tmp_path):
    """A job killed after epoch 1 and restarted ends with the weights of an uninterrupted run."""
    images, train, _ = data
    idx, texts = train["index"].to_numpy(), train["caption"].tolist()
    cfg = ContrastiveConfig(epochs=3, batch_size=32, lr=1e-3, warmup_steps=2, augment=True, seed=5)

    full = tiny()
    train_contrastive(full, images, idx, texts, cfg, CPU, progress=False)

    class Killed(Exception):
        pass

    def die_after_first(epoch, model):
        if epoch == 1:
            raise Killed  # simulates SIGKILL after epoch 0's state was saved
        return {}

    state = tmp_path / "resume_state.pt"
    first = tiny()
    with pytest.raises(Killed):
        train_contrastive(first, images, idx, texts, cfg, CPU, state_path=state, progress=False, on_epoch_end=die_after_first)
    resumed = tiny()
    train_contrastive(resumed, images, idx, texts, cfg, CPU, state_path=state, progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
