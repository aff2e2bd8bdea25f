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
    assert training_texts(train, "caption", ["{c}"]) == train["caption"].tolist()
    head = train.head(2)
    templates = ["a photo of {c}.", "{c} tissue"]
    expected = [(f"a photo of {c}.", f"{c} tissue") for c in head["label_name"]]
    assert training_texts(head, "label", templates) == expected
    renamed = training_texts(head, "label", templates, {head["label_name"].iloc[0]: "ZZ"})
    assert renamed[0] == ("a photo of ZZ.", "ZZ tissue")  # the dataset's prompt class names, as evaluation uses
    with pytest.raises(ValueError, match="no caption"):
        training_texts(train.assign(caption=""), "caption", ["{c}"])


def test_label_fine_tuning_trains_on_every_template_the_same_way_each_run(data, monkeypatch):
    """Each pair's label prompt is drawn from all templates (not only the first), per epoch, seeded."""
    import medtune.contrastive as contrastive

    images, train, val = data
    templates = ["a photo of {c}.", "an H&E patch of {c}.", "{c}, under the microscope."]
    prompts = {f"{t.format(c=c)}": i for c in train["label_name"].unique() for i, t in enumerate(templates)}

    def run() -> list[int]:
        backbone = tiny()
        by_tokens = {tuple(backbone.tokenizer([s])[0].tolist()): i for s, i in prompts.items()}
        seen: list[int] = []
        forward = contrastive.clip_forward

        def spy(bb, images, tokens):
            if torch.is_grad_enabled():  # training passes only, not the validation loss
                seen.extend(by_tokens[tuple(row)] for row in tokens.tolist())
            return forward(bb, images, tokens)

        monkeypatch.setattr(contrastive, "clip_forward", spy)
        params = {"text": "label", "templates": templates, "epochs": 1, "batch_size": 32, "lr": 1e-5, "weight_decay": 0.0}
        finetune(backbone, images, train, val, params, seed=4, device=CPU, progress=False)
        monkeypatch.setattr(contrastive, "clip_forward", forward)
        return seen

    first = run()
    assert len(first) == len(train)
    assert np.bincount(first, minlength=3).min() > len(first) // 6  # every template, near a third each
    assert run() == first


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
