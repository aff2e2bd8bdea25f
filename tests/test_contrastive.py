"""The contrastive loop: exact gradient accumulation, steps that always happen, resume
mid-accumulation, the GradScaler in the resume state, the logit_scale cap, text draws."""

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune import contrastive
from medtune.contrastive import (
    ContrastiveConfig,
    accumulate_gradients,
    draw_texts,
    micro_slices,
    text_table,
    train_contrastive,
)
from medtune.data.synthetic import SyntheticSpec, generate
from medtune.models import load_backbone
from medtune.preprocess import normalize
from medtune.training import TrainingError, load_resume_state

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    images, rows = generate(SyntheticSpec(sizes={"train": 64}, image_size=32, seed=3))
    return images, rows["index"].to_numpy(), rows["caption"].tolist()


def tiny():
    return load_backbone("tiny", {"arch": "medtune-tiny", "init_seed": 0})


def weights(backbone):
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


class Killed(Exception):
    pass


class Evil:
    """Anything that is not a tensor, number, string or plain container."""


# ---------------------------------------------------------------- every batch steps


def test_grad_accum_2_with_one_batch_per_epoch_changes_the_weights(data):
    images, idx, texts = data
    backbone = tiny()
    before = weights(backbone)
    cfg = ContrastiveConfig(epochs=1, batch_size=len(idx), lr=1e-3, warmup_steps=0, augment=False, grad_accum=2)
    train_contrastive(backbone, images, idx[:8], texts[:8], cfg, CPU, progress=False)
    after = weights(backbone)
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert "visual.conv1.weight" in changed and "text_projection" in changed


def test_micro_slices_cover_the_batch_once_without_empty_pieces():
    for n, k in [(12, 5), (7, 7), (3, 8), (64, 3)]:
        parts = micro_slices(n, k)
        covered = np.concatenate([np.arange(n)[p] for p in parts])
        assert covered.tolist() == list(range(n))
        assert len(parts) == min(n, k) and all(p.stop > p.start for p in parts)
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------- exact accumulation


def clip_loss_by_hand(out):
    """CLIP's loss written from its definition: (image->text CE + text->image CE) / 2."""
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def float64_batch(backbone, texts, n=12):
    backbone.model.double().train()  # ViT + transformer: layer norm only, no batch-dependent layer
    x = torch.rand(n, 3, backbone.image_size, backbone.image_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return x, backbone.tokenizer(texts[:n])


def grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("k", [2, 3, 5, 12])
def test_k_micro_batches_give_the_gradients_of_one_k_times_larger_batch(data, k):
    from open_clip.loss import ClipLoss

    _, _, texts = data
    backbone = tiny()
    x, tokens = float64_batch(backbone, texts)
    model = backbone.model

    model.zero_grad(set_to_none=True)
    big_loss = clip_loss_by_hand(model(normalize(x, backbone.mean, backbone.std), tokens))
    big_loss.backward()
    reference = grads(model)

    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(backbone, x, tokens, k, ClipLoss())
    accumulated = grads(model)

    assert abs(loss.item() - big_loss.item()) < 1e-12
    assert accumulated.keys() == reference.keys() and "logit_scale" in reference
    for name, g in reference.items():
        assert torch.allclose(accumulated[name], g, rtol=1e-8, atol=1e-10), (name, (accumulated[name] - g).abs().max())


def test_plain_micro_batch_losses_do_not_give_the_big_batch_gradients(data):
    """The control: summing the micro-batches' own losses changes the objective (other negatives),
    so the equality above is a property of the accumulation, not of the test."""
    _, _, texts = data
    backbone = tiny()
    x, tokens = float64_batch(backbone, texts)
    model = backbone.model
    clip_loss_by_hand(model(normalize(x, backbone.mean, backbone.std), tokens)).backward()
    reference = grads(model)
    model.zero_grad(set_to_none=True)
    for part in micro_slices(len(x), 3):
        (clip_loss_by_hand(model(normalize(x[part], backbone.mean, backbone.std), tokens[part])) / 3).backward()
    assert (grads(model)["visual.conv1.weight"] - reference["visual.conv1.weight"]).abs().max() > 1e-4


class BatchNormClip(torch.nn.Module):
    """A stand-in CLIP whose image tower is one batch norm: its running statistics show every forward."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, images, tokens):
        image = F.normalize(self.bn(images.flatten(1)), dim=-1)
        return {"image_features": image, "text_features": F.normalize(tokens, dim=-1), "logit_scale": self.logit_scale.exp()}


def test_the_caching_pass_leaves_batch_norm_statistics_to_the_gradient_pass():
    from open_clip.loss import ClipLoss

    stub = types.SimpleNamespace(model=BatchNormClip().double(), mean=(0.0,) * 4, std=(1.0,) * 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 1, 1, dtype=torch.float64, generator=gen)
    t = torch.randn(8, 4, dtype=torch.float64, generator=gen)
    accumulate_gradients(stub, x, t, 2, ClipLoss())
    # one update per micro-batch (momentum 0.1 from zero), by the gradient pass alone
    expected = torch.zeros(4, dtype=torch.float64)
    for part in micro_slices(8, 2):
        expected = 0.9 * expected + 0.1 * x[part].flatten(1).mean(0)
    assert torch.allclose(stub.model.bn.running_mean, expected)
    assert int(stub.model.bn.num_batches_tracked) == 2


# ---------------------------------------------------------------- resume


def test_a_run_killed_mid_accumulation_resumes_to_bit_identical_weights(data, tmp_path, monkeypatch):
    images, idx, texts = data
    # 64 pairs, batches of 32: 2 steps an epoch, each in 2 micro-batches (4 loss checks an epoch)
    cfg = ContrastiveConfig(epochs=3, batch_size=32, lr=1e-3, warmup_steps=2, augment=True, seed=5, grad_accum=2)
    label_texts = [(t, t.upper(), "x " + t) for t in texts]  # several candidates: the draws must resume too

    full = tiny()
    train_contrastive(full, images, idx, label_texts, cfg, CPU, progress=False)

    state = tmp_path / "resume_state.pt"
    real_check, calls = contrastive.check_finite, []

    def check_then_die(loss, step, lr):
        real_check(loss, step, lr)
        calls.append(step)
        if len(calls) == 6:  # epoch 2, first step, second micro-batch: the first one's gradients are in .grad
            raise Killed

    monkeypatch.setattr(contrastive, "check_finite", check_then_die)
    first = tiny()
    with pytest.raises(Killed):
        train_contrastive(first, images, idx, label_texts, cfg, CPU, state_path=state, progress=False)
    assert calls == [0, 0, 1, 1, 2, 2]
    saved = load_resume_state(state)
    assert (saved["epoch"], saved["step"]) == (0, 2)  # it resumes from epoch 1's state, not from scratch
    monkeypatch.setattr(contrastive, "check_finite", real_check)

    resumed = tiny()
    train_contrastive(resumed, images, idx, label_texts, cfg, CPU, state_path=state, progress=False)
    for key, value in weights(full).items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_the_grad_scaler_state_round_trips_through_the_resume_state(data, tmp_path, monkeypatch):
    images, idx, texts = data
    scalers = []

    def growing_scaler(device, use_amp):
        # a CPU scaler that doubles its scale every step: a state that differs at every step
        scalers.append(torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=1))
        return scalers[-1]

    monkeypatch.setattr(contrastive, "make_scaler", growing_scaler)
    cfg = ContrastiveConfig(epochs=3, batch_size=32, lr=1e-3, warmup_steps=0, augment=False, seed=1)
    train_contrastive(tiny(), images, idx, texts, cfg, CPU, progress=False)
    uninterrupted = scalers[-1].state_dict()
    assert uninterrupted["scale"] == 16.0 * 2**6  # 3 epochs x 2 steps

    def die_at_epoch_1(epoch, model):
        if epoch == 1:
            raise Killed
        return {}

    state = tmp_path / "resume_state.pt"
    with pytest.raises(Killed):
        train_contrastive(tiny(), images, idx, texts, cfg, CPU, state_path=state, progress=False, on_epoch_end=die_at_epoch_1)
    saved = load_resume_state(state)  # weights_only=True: the scaler state is plain numbers
    assert saved["scaler"]["scale"] == 16.0 * 2**2 and saved["step"] == 2
    train_contrastive(tiny(), images, idx, texts, cfg, CPU, state_path=state, progress=False)
    assert scalers[-1].state_dict() == uninterrupted


def test_a_resume_state_holding_more_than_tensors_is_refused(tmp_path):
    path = tmp_path / "resume_state.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(TrainingError, match="resume state .*resume_state.pt cannot be read.*delete it"):
        load_resume_state(path)


def test_a_resume_state_for_another_schedule_is_refused(data, tmp_path):
    images, idx, texts = data
    state = tmp_path / "resume_state.pt"
    cfg = ContrastiveConfig(epochs=1, batch_size=32, lr=1e-3, warmup_steps=0, augment=False)
    train_contrastive(tiny(), images, idx[:4], texts[:4], cfg, CPU, state_path=state, progress=False)
    with pytest.raises(TrainingError, match="another schedule.*delete it"):
        train_contrastive(tiny(), images, idx[:8], texts[:8], cfg, CPU, state_path=state, progress=False)


# ---------------------------------------------------------------- FLYP details


def test_logit_scale_is_clamped_at_ln_100_after_each_step(data):
    images, idx, texts = data
    backbone = tiny()
    with torch.no_grad():
        backbone.model.logit_scale.fill_(5.0)  # a temperature below 0.01
    cfg = ContrastiveConfig(epochs=1, batch_size=8, lr=1e-6, warmup_steps=0, augment=False)
    train_contrastive(backbone, images, idx[:8], texts[:8], cfg, CPU, progress=False)
    assert backbone.model.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)


def test_the_nan_message_names_the_warm_up_learning_rate_of_that_step():
    backbone = tiny()
    with torch.no_grad():
        backbone.model.logit_scale.fill_(float("nan"))
    images = np.zeros((4, 16, 16, 3), np.uint8)
    cfg = ContrastiveConfig(epochs=5, batch_size=4, lr=0.01, warmup_steps=4)  # step 0 runs at 0.01 * 1/4
    with pytest.raises(TrainingError, match=r"at step 0 \(learning rate 0\.0025\)"):
        train_contrastive(backbone, images, np.arange(4), ["a", "b", "c", "d"], cfg, CPU, progress=False)


def test_texts_are_drawn_from_every_candidate_deterministically():
    templates = ["a {c}.", "an image of {c}.", "{c}, stained."]
    texts = [tuple(t.format(c=f"class {i % 5}") for t in templates) for i in range(300)] + ["one caption"]
    vocab, table, counts = text_table(texts)
    assert len(vocab) == 5 * 3 + 1 and counts.tolist() == [3] * 300 + [1]
    draws = {epoch: [vocab[i] for i in draw_texts(table, counts, seed=7, epoch=epoch)] for epoch in range(3)}
    for epoch, drawn in draws.items():
        assert drawn[300] == "one caption"
        chosen = np.array([texts[i].index(d) for i, d in enumerate(drawn[:300])])  # which template each pair got
        assert np.bincount(chosen, minlength=3).min() > 70  # every template, near 100 each
        assert drawn == [vocab[i] for i in draw_texts(table, counts, seed=7, epoch=epoch)]
    assert draws[0] != draws[1]  # a new draw each epoch
    assert draws[0] != [vocab[i] for i in draw_texts(table, counts, seed=8, epoch=0)]
