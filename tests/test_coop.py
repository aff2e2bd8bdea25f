import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.heads import FitData, fit, load_head, predict
from medtune.methods import coop
from medtune.methods.zeroshot import TextClassifier
from medtune.models import load_backbone
from medtune.training import TrainingError

NAMES = ["lymph node", "lymph node containing metastatic tumor tissue", "adipose"]
PHRASE = "a histopathology image of"


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny", {"arch": "medtune-tiny"})


def _zero_shot_text(backbone, names):
    with torch.no_grad():
        tokens = backbone.tokenizer([f"{PHRASE} {c}." for c in names])
        return F.normalize(backbone.model.encode_text(tokens), dim=-1)


def test_context_from_phrase_reproduces_zero_shot_text(backbone):
    learner = coop.PromptLearner(backbone.model, backbone.tokenizer, NAMES, ctx_init=PHRASE)
    assert learner.n_ctx == coop.phrase_length(backbone.model, backbone.tokenizer, PHRASE) == 7  # "histopathology" is 3 BPE tokens
    with torch.no_grad():
        ours = coop.encode_prompts(
            backbone.model, learner.ctx, learner.token_prefix, learner.token_suffix, learner.tokens
        )
    reference = _zero_shot_text(backbone, NAMES)
    assert torch.allclose(ours, reference, atol=1e-5)
    feats = F.normalize(torch.randn(6, ours.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = backbone.logit_scale
    assert torch.allclose(TextClassifier(ours, scale)(feats), TextClassifier(reference, scale)(feats), atol=1e-4)


def test_placeholder_context_set_to_word_embeddings_reproduces_zero_shot_text(backbone):
    """The X placeholders are exactly the context slots: fill them with the phrase's embeddings."""
    model, tok = backbone.model, backbone.tokenizer
    n = coop.phrase_length(model, tok, PHRASE)
    learner = coop.PromptLearner(model, tok, NAMES, n_ctx=n, generator=torch.Generator().manual_seed(0))
    assert learner.prompts[0] == "X X X X X X X lymph node."
    with torch.no_grad():
        learner.ctx.copy_(model.token_embedding(tok([PHRASE]))[0, 1 : 1 + n])
        ours = learner(model)
    assert torch.allclose(ours, _zero_shot_text(backbone, NAMES), atol=1e-5)


def _toy(seed=0, n=80, dim=64):
    """Two classes around random centres: the untrained prompts are at chance on them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    labels = np.arange(n) % 2
    feats = F.normalize(torch.tensor(centres[labels] + 0.8 * rng.normal(size=(n, dim)), dtype=torch.float32), dim=-1)
    half = n // 2
    return FitData(feats[:half].numpy(), labels[:half], feats[half:].numpy(), labels[half:], None, 1.0)


PARAMS = {"n_ctx": 4, "epochs": 4, "batch_size": 8}
TWO = ["normal tissue", "tumor"]


def test_only_the_context_gets_gradients(backbone):
    model = backbone.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = coop.PromptLearner(model, backbone.tokenizer, TWO, n_ctx=4, generator=torch.Generator().manual_seed(0))
    data = _toy()
    with coop.frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
        logits = backbone.logit_scale * torch.from_numpy(data.train_features) @ learner(model).T
        F.cross_entropy(logits, torch.from_numpy(data.train_labels)).backward()
    assert all(p.grad is None for p in model.parameters())
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0

    coop.fit_coop(backbone, TWO, data, PARAMS, seed=0)
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fit_lowers_the_loss_and_learns(backbone):
    data = _toy()
    state, info = coop.fit_coop(backbone, TWO, data, {**PARAMS, "lr": 0.002}, seed=0)
    assert info["val_accuracy_init"] <= 0.6
    assert info["lr_by_epoch"][0] == 1e-5 and info["lr_by_epoch"][1] == 0.002
    losses, accs = info["train_loss_by_epoch"], info["train_accuracy_by_epoch"]
    assert len(losses) == PARAMS["epochs"] and losses[-1] < 0.5 * losses[0]
    assert accs[-1] > accs[0] + 0.3
    assert info["val_accuracy"] == max(info["val_accuracy_by_epoch"]) >= info["val_accuracy_init"] + 0.3
    assert info["trainable_parameters"] == 4 * backbone.model.token_embedding.weight.shape[1] == state["ctx"].numel()
    head = coop.build_head(state)
    acc = (predict(head, data.val_features).argmax(1) == data.val_labels).mean()
    assert acc == pytest.approx(info["val_accuracy"])


def test_same_seed_same_context(backbone):
    data = _toy(1)
    params = {**PARAMS, "epochs": 2}
    a, info_a = coop.fit_coop(backbone, TWO, data, params, seed=3)
    b, info_b = coop.fit_coop(backbone, TWO, data, params, seed=3)
    c, _ = coop.fit_coop(backbone, TWO, data, params, seed=4)
    assert torch.equal(a["ctx"], b["ctx"]) and torch.equal(a["class_text"], b["class_text"])
    assert info_a["train_loss_by_epoch"] == info_b["train_loss_by_epoch"]
    assert not torch.equal(a["ctx"], c["ctx"])


def test_head_round_trips_through_weights_only_load(backbone, tmp_path):
    data = _toy()
    data.backbone, data.class_names = backbone, TWO
    state, _ = fit("coop", data, {**PARAMS, "epochs": 1, "ctx_init": "a photo of a"}, seed=0)
    assert set(state) >= {"module", "class_text", "logit_scale", "ctx"} and state["module"] == "medtune.methods.coop"
    torch.save(state, tmp_path / "head.pt")
    loaded = torch.load(tmp_path / "head.pt", map_location="cpu", weights_only=True)
    assert torch.equal(loaded["ctx"], state["ctx"])
    assert np.array_equal(predict(load_head(tmp_path / "head.pt"), data.val_features), predict(coop.build_head(state), data.val_features))


def test_nan_features_name_step_and_lr(backbone):
    data = _toy()
    data.train_features = data.train_features.copy()
    data.train_features[:, 0] = np.nan
    with pytest.raises(TrainingError, match=r"step 0 \(learning rate 1e-05\)"):
        coop.fit_coop(backbone, TWO, data, PARAMS, seed=0)


def test_clear_errors(backbone):
    with pytest.raises(coop.CoOpError, match="FitData.backbone is not set"):
        coop.fit(_toy(), PARAMS, 0)
    with pytest.raises(coop.CoOpError, match="context length"):
        coop.PromptLearner(backbone.model, backbone.tokenizer, ["a very long class name " * 3], n_ctx=16)
    with pytest.raises(coop.CoOpError, match="built-in text transformer"):
        coop.check_supported(torch.nn.Linear(2, 2))


def test_text_transformer_runs_on_the_prompt_length_only(backbone):
    """Causal mask: positions after the last EOS cannot change the pooled features, so they are not computed."""
    learner = coop.PromptLearner(backbone.model, backbone.tokenizer, NAMES, ctx_init=PHRASE)
    seen = []
    hook = backbone.model.transformer.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    try:
        with torch.no_grad():
            coop.encode_prompts(backbone.model, learner.ctx, learner.token_prefix, learner.token_suffix, learner.tokens)
    finally:
        hook.remove()
    longest = int(coop._eos_positions(backbone.model, learner.tokens).max()) + 1
    assert seen == [longest] and longest < backbone.model.positional_embedding.shape[0]


def test_training_is_the_plain_loop_with_one_text_pass_per_step(backbone):
    """Reusing an epoch's last prompt features for validation and the next step changes nothing but the cost."""
    from medtune.training import seed_everything

    data, params = _toy(), {**PARAMS, "epochs": 3, "batch_size": 16}
    model = backbone.model
    passes = []
    hook = model.transformer.register_forward_hook(lambda module, args, out: passes.append(1))
    try:
        state, info = coop.fit_coop(backbone, TWO, data, params, seed=0)
    finally:
        hook.remove()
    assert len(passes) == info["steps"] + 1  # was steps + epochs + 2: every step, every validation, the saved head

    # the same training written plainly, the prompts encoded for every step
    p = {**coop.SPEC["defaults"], **params}
    gen = seed_everything(0)
    x, y = torch.from_numpy(data.train_features), torch.from_numpy(data.train_labels)
    contexts = []
    with coop.frozen(model):
        learner = coop.PromptLearner(model, backbone.tokenizer, TWO, p["n_ctx"], None, p["ctx_std"], gen)
        optimizer = torch.optim.SGD([learner.ctx], lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
        for epoch in range(p["epochs"]):
            for group in optimizer.param_groups:
                group["lr"] = coop.lr_at(epoch, p)
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x) - len(x) % 16, 16):
                sel = order[start : start + 16]
                loss = F.cross_entropy(coop.class_logits(x[sel], learner(model), backbone.logit_scale), y[sel])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            contexts.append(learner.ctx.detach().clone())
        best = contexts[info["best_epoch"] - 1]
        text = coop.encode_prompts(model, best, learner.token_prefix, learner.token_suffix, learner.tokens)
    assert torch.equal(state["ctx"], best)
    torch.testing.assert_close(state["class_text"], text, atol=1e-6, rtol=0)
