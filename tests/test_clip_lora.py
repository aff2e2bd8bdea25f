"""CLIP-LoRA against hand-written references on small tensors: the projection, the frozen base,
the zero update at initialisation, the exact merge and dropout on the branch input only."""

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medtune.data.synthetic import SyntheticSpec, generate
from medtune.methods import clip_lora
from medtune.methods.clip_lora import LoRAAttention, add_lora, lora_parameters, merge_lora, train_lora
from medtune.models import Backbone, load_backbone

CPU = torch.device("cpu")
FAST = {"iterations_per_shot": 1, "max_iterations": 6, "batch_size": 8, "lr": 1e-2}


def mha(d=8, heads=2, batch_first=True, seed=0):
    torch.manual_seed(seed)
    attention = nn.MultiheadAttention(d, heads, batch_first=batch_first).double()
    with torch.no_grad():
        attention.in_proj_bias.normal_()  # nn.MultiheadAttention starts its biases at 0
        attention.out_proj.bias.normal_()
    return attention


def randomise(wrapper: LoRAAttention, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*wrapper.lora_A.values(), *wrapper.lora_B.values()]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return wrapper


@functools.cache
def _tiny() -> Backbone:
    return load_backbone("tiny", {"arch": "medtune-tiny", "init_seed": 0})


def tiny(dtype=torch.float32) -> Backbone:
    """A fresh copy of the untrained tiny backbone (built once: building it is the slow part)."""
    backbone = copy.deepcopy(_tiny())
    backbone.model.to(dtype)
    return backbone


@pytest.fixture(scope="module")
def data():
    # 8 training images of each of the 9 tissues: enough for 8 steps of 1 image per class
    images, rows = generate(SyntheticSpec(sizes={"train": 72, "val": 27}, image_size=32, seed=3))
    return images, rows[rows.split == "train"], rows[rows.split == "val"]


def test_scale_is_alpha_over_root_r_as_upstream_or_alpha_over_r():
    assert clip_lora.scale_of(2, 1.0) == pytest.approx(1 / math.sqrt(2))  # MaxZanella/CLIP-LoRA loralib/layers.py
    assert clip_lora.scale_of(2, 1.0, "alpha/r") == 0.5
    assert clip_lora.scale_of(4, 8.0, "alpha/r") == 2.0


@pytest.mark.parametrize("scaling", ["alpha/sqrt(r)", "alpha/r"])
def test_projections_are_x_times_the_updated_weight(scaling):
    base = mha().eval()
    s = clip_lora.scale_of(2, 3.0, scaling)
    wrapper = randomise(LoRAAttention(base, rank=2, scale=s, dropout=0.25, targets=["q", "k", "v"]).eval())
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    W, b = base.in_proj_weight.detach(), base.in_proj_bias.detach()
    for i, (t, got) in enumerate(zip("qkv", wrapper.project(x, x, x))):
        A, B = wrapper.lora_A[t].detach(), wrapper.lora_B[t].detach()
        expected = x @ (W[8 * i : 8 * (i + 1)] + s * B @ A).T + b[8 * i : 8 * (i + 1)]
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # a projection without an update is the base's
    only_v = randomise(LoRAAttention(base, rank=2, scale=s, targets=["v"]).eval())
    q, _, v = only_v.project(x, x, x)
    assert torch.allclose(q, x @ W[:8].T + b[:8], rtol=0, atol=1e-12)
    assert not torch.allclose(v, x @ W[16:].T + b[16:])


def reference_attention(base: nn.MultiheadAttention, wrapper: LoRAAttention, x, mask=None):
    """Multi-head attention written out (batch-first x): softmax(q kᵀ/√h + mask) v, then out_proj."""
    q, k, v = wrapper.project(x, x, x)
    n, length, d = x.shape
    heads = base.num_heads
    split = lambda t: t.view(n, length, heads, d // heads).transpose(1, 2)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, length, d)
    return out @ base.out_proj.weight.T + base.out_proj.bias


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_with_masks_against_a_hand_written_reference(batch_first):
    base = mha(batch_first=batch_first).eval()
    wrapper = randomise(LoRAAttention(base, rank=2, scale=0.5, targets=["q", "k", "v"]).eval())
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    causal = torch.full((4, 4), float("-inf"), dtype=torch.float64).triu(1)
    layout = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
    got = layout(wrapper(layout(x), layout(x), layout(x), need_weights=False, attn_mask=causal)[0])
    assert torch.allclose(got, reference_attention(base, wrapper, x, causal), rtol=0, atol=1e-12)
    # a boolean mask (True: not attended) and key padding, as nn.MultiheadAttention reads them
    padding = torch.tensor([[False, False, False, True], [False, False, False, False]])
    got = layout(wrapper(layout(x), layout(x), layout(x), need_weights=False, attn_mask=causal.isinf(), key_padding_mask=padding)[0])
    additive = causal.expand(2, 1, 4, 4) + torch.where(padding, float("-inf"), 0.0).double().view(2, 1, 1, 4)
    assert torch.allclose(got, reference_attention(base, wrapper, x, additive), rtol=0, atol=1e-12)
    # and with no update at all, nn.MultiheadAttention itself
    plain = LoRAAttention(base, rank=2, scale=0.5).eval()  # B = 0
    expected = base(layout(x), layout(x), layout(x), need_weights=False, attn_mask=causal)[0]
    assert torch.allclose(plain(layout(x), layout(x), layout(x), need_weights=False, attn_mask=causal)[0], expected, rtol=0, atol=1e-12)


def test_dropout_acts_on_the_branch_input_only_in_training_mode():
    base = mha().eval()
    s = 0.5
    wrapper = randomise(LoRAAttention(base, rank=2, scale=s, dropout=0.5, targets=["q", "k", "v"]))
    seen = []
    wrapper.lora_dropout.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    W, b = base.in_proj_weight.detach(), base.in_proj_bias.detach()
    wrapper.train()
    torch.manual_seed(0)
    got = wrapper.project(x, x, x)
    assert len(seen) == 3  # one mask per projection, as upstream's LinearLoRA per q, k, v
    for i, (t, (inp, dropped)) in enumerate(zip("qkv", seen)):
        assert torch.equal(inp, x)  # dropout takes the projection's input ...
        assert ((dropped == 0) | torch.isclose(dropped, 2 * x)).all() and (dropped == 0).any()  # ... and drops it
        A, B = wrapper.lora_A[t].detach(), wrapper.lora_B[t].detach()
        # the base path sees x undropped; the update sees the dropped x
        expected = x @ W[8 * i : 8 * (i + 1)].T + b[8 * i : 8 * (i + 1)] + s * dropped @ A.T @ B.T
        assert torch.allclose(got[i], expected, rtol=0, atol=1e-12)
    masks = [(d == 0) for _, d in seen]
    assert not torch.equal(masks[0], masks[1])  # independent masks
    # evaluation: no dropout anywhere
    seen.clear()
    wrapper.eval()
    q = wrapper.project(x, x, x)[0]
    assert torch.equal(seen[0][1], x)
    A, B = wrapper.lora_A["q"].detach(), wrapper.lora_B["q"].detach()
    assert torch.allclose(q, x @ (W[:8] + s * B @ A).T + b[:8], rtol=0, atol=1e-12)
    # with B = 0 the training-mode output is the base's, however much dropout: the base path is never dropped
    zero = LoRAAttention(base, rank=2, scale=s, dropout=0.9).train()
    assert torch.allclose(zero.project(x, x, x)[0], x @ W[:8].T + b[:8], rtol=0, atol=1e-12)


def test_untrained_lora_model_is_the_base_model():
    backbone = tiny(torch.float64)
    model = backbone.model.eval()
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64)
    tokens = backbone.tokenizer(["a histopathology image of tumor.", "stroma"])
    image, text = model.encode_image(x), model.encode_text(tokens)
    wrappers = add_lora(model, rank=2, alpha=1.0, dropout=0.25, generator=torch.Generator().manual_seed(0))
    # both towers, every layer: 2 image + 2 text blocks of the tiny model
    assert [clip_lora.tower_of(n) for n, m in model.named_modules() if isinstance(m, LoRAAttention)] == ["image"] * 2 + ["text"] * 2
    assert all(torch.count_nonzero(a) > 0 for w in wrappers for a in w.lora_A.values())  # A random, B zero
    assert all(torch.count_nonzero(b) == 0 for w in wrappers for b in w.lora_B.values())
    for w in wrappers:
        w.train()  # dropout on: still the base model, B being zero
    assert torch.allclose(model.encode_image(x), image, rtol=0, atol=1e-12)
    assert torch.allclose(model.encode_text(tokens), text, rtol=0, atol=1e-12)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and set(trainable) == set(lora_parameters(model))
    # per layer: q, k, v x (A: 2 x d, B: d x 2); image width 96, text width 64, two layers each
    assert sum(p.numel() for p in lora_parameters(model).values()) == 2 * 3 * (2 * 2 * 96) + 2 * 3 * (2 * 2 * 64)


def test_merging_gives_the_unmerged_models_outputs_and_an_ordinary_checkpoint():
    backbone = tiny(torch.float64)
    model = backbone.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrappers = add_lora(model, rank=2, alpha=1.0, targets=["q", "k", "v", "o"], generator=torch.Generator().manual_seed(0))
    for i, w in enumerate(wrappers):
        randomise(w, seed=i).eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    tokens = backbone.tokenizer(["a histopathology image of tumor.", "adipose tissue"])
    image, text = model.encode_image(x), model.encode_text(tokens)
    names = [n for n, m in model.named_modules() if isinstance(m, LoRAAttention)]
    # s B A by hand, s = alpha / sqrt(r) = 1 / sqrt(2)
    updates = {n: {t: (w.lora_B[t] @ w.lora_A[t]).detach() / math.sqrt(2) for t in w.lora_A} for n, w in zip(names, wrappers)}
    assert merge_lora(model) == 4
    assert not any(isinstance(m, LoRAAttention) for m in model.modules())
    assert torch.allclose(model.encode_image(x), image, rtol=0, atol=1e-10)
    assert torch.allclose(model.encode_text(tokens), text, rtol=0, atol=1e-10)
    after = model.state_dict()
    assert list(after) == list(before)  # the keys open_clip saves and loads
    for name, delta in updates.items():
        W0 = before[f"{name}.in_proj_weight"]
        d = W0.shape[1]  # rows q, then k, then v
        expected = torch.cat([W0[i * d : (i + 1) * d] + delta[t] for i, t in enumerate("qkv")])
        assert torch.allclose(after[f"{name}.in_proj_weight"], expected, rtol=0, atol=1e-13)
        assert torch.allclose(after[f"{name}.out_proj.weight"], before[f"{name}.out_proj.weight"] + delta["o"], rtol=0, atol=1e-13)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{n}.{w}" for n in updates for w in ("in_proj_weight", "out_proj.weight")}
    assert all(p.requires_grad for p in model.parameters())  # as load_backbone left them
    # an ordinary checkpoint: a fresh model loads it and gives the same outputs
    fresh = tiny(torch.float64).model.eval()
    fresh.load_state_dict(after)
    assert torch.allclose(fresh.encode_image(x), image, rtol=0, atol=1e-10)


def test_training_leaves_the_base_weights_untouched(data):
    images, train, val = data
    backbone = tiny()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    prompts = [[f"a histopathology image of {c}."] for c in clip_lora.class_names(train, val)]
    info = train_lora(backbone, images, train, prompts, {**FAST, "max_iterations": 5}, seed=0, device=CPU, progress=False)
    model = backbone.model
    assert info["iterations"] == 5 and info["images_seen"] == 5 * 8
    assert info["trainable_parameters"] == sum(p.numel() for p in lora_parameters(model).values())
    assert info["lora_layers"] == {"image": 2, "text": 2}
    for name, w in ((n, m) for n, m in model.named_modules() if isinstance(m, LoRAAttention)):
        assert torch.equal(w.base.in_proj_weight, before[f"{name}.in_proj_weight"])
        assert any(torch.count_nonzero(b) > 0 for b in w.lora_B.values())  # the update moved
    # every pretrained tensor, under its wrapped name, is bit-identical
    unwrapped = {k.replace(".attn.base.", ".attn."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert unwrapped.keys() == before.keys() and all(torch.equal(unwrapped[k], before[k]) for k in before)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)


def test_tune_yields_the_merged_model_and_its_cost(data):
    images, train, val = data
    backbone = tiny()
    prompts = {"templates": ["a histopathology image of {c}.", "an H&E patch of {c}."]}
    pretrained, kept, info = clip_lora.tune(backbone, images, train, val, FAST, prompts, seed=1, device=CPU, progress=False)
    assert list(kept) == list(pretrained) and info["merged_layers"] == 4
    assert not any(isinstance(m, LoRAAttention) for m in backbone.model.modules())
    assert all(torch.equal(kept[k], v) for k, v in backbone.model.state_dict().items())
    assert any(not torch.equal(kept[k], pretrained[k]) for k in kept if k.endswith("in_proj_weight"))
    assert [suffix for suffix, _ in clip_lora.mixes(pretrained, kept, FAST)] == [""]
    # the same seed gives the same weights
    again = clip_lora.tune(tiny(), images, train, val, FAST, prompts, seed=1, device=CPU, progress=False)[1]
    assert all(torch.equal(again[k], kept[k]) for k in kept)


def test_iterations_are_500_per_shot_capped():
    params = clip_lora.SPEC["defaults"]
    assert clip_lora.iterations(5 * 4, 5, params) == 2000  # 4 shots: upstream's 500 x 4
    assert clip_lora.iterations(5 * 16, 5, params) == 8000
    assert clip_lora.iterations(5 * 100, 5, params) == 8000  # capped
    assert clip_lora.iterations(3, 5, {**params, "iterations_per_shot": 2}) == 2  # at least one image per class


def test_the_schedule_is_cosine_annealing_per_step():
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([p], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 50, eta_min=1e-6)
    for step in range(50):
        assert clip_lora.cosine(step, 50, 2e-4, 1e-6) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        scheduler.step()


def test_random_resized_crop_is_seeded_and_in_range():
    x = torch.rand(4, 3, 32, 32)
    a = clip_lora.random_resized_crop(x, 24, torch.Generator().manual_seed(0))
    b = clip_lora.random_resized_crop(x, 24, torch.Generator().manual_seed(0))
    c = clip_lora.random_resized_crop(x, 24, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_resume_after_a_kill_gives_the_same_weights(data, tmp_path, monkeypatch):
    images, train, val = data
    monkeypatch.setattr(clip_lora, "SAVE_EVERY", 2)
    params = {**FAST, "max_iterations": 7}
    prompts = [[f"{c}"] for c in clip_lora.class_names(train, val)]
    full = tiny()
    train_lora(full, images, train, prompts, params, seed=3, device=CPU, progress=False)

    class Killed(Exception):
        pass

    def die(step):
        if step == 5:
            raise Killed  # after step 4's state was saved

    state = tmp_path / "resume_state.pt"
    with pytest.raises(Killed):
        train_lora(tiny(), images, train, prompts, params, seed=3, device=CPU, state_path=state, progress=False, on_step=die)
    resumed = tiny()
    assert torch.load(state, weights_only=True)["step"] == 4
    train_lora(resumed, images, train, prompts, params, seed=3, device=CPU, state_path=state, progress=False)
    merge_lora(full.model), merge_lora(resumed.model)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_a_tower_without_multihead_attention_is_named():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Linear(4, 4)
            self.attn = nn.MultiheadAttention(4, 1)

    with pytest.raises(clip_lora.TrainingError, match="image tower has no nn.MultiheadAttention"):
        add_lora(Tower(), rank=2, alpha=1.0)
    assert len(add_lora(Tower(), rank=2, alpha=1.0, encoders="text")) == 1
