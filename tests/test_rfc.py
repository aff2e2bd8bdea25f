import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.heads import FitData, build_head, fit, predict
from medtune.methods.rfc import ResidualFeatureConnection, RFCHead, bottleneck
from medtune.methods.zeroshot import TextClassifier


def _unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_bottleneck_shape_and_no_bias():
    mlp = bottleneck(1024, [4, 16, 4])
    sizes = [m.weight.shape for m in mlp if isinstance(m, torch.nn.Linear)]
    assert sizes == [(256, 1024), (64, 256), (256, 64), (1024, 256)]
    assert all(m.bias is None for m in mlp if isinstance(m, torch.nn.Linear))


def test_alpha_zero_gives_zero_shot_logits_exactly():
    torch.manual_seed(0)
    feats, text = _unit(torch.randn(7, 32)), _unit(torch.randn(3, 32))
    rfc = RFCHead(ResidualFeatureConnection(32, [4, 16, 4], alpha=0.0), text, 42.0)
    zs = TextClassifier(text, 42.0)
    assert torch.equal(rfc(feats), zs(feats))


def test_alpha_one_uses_only_the_adapter():
    torch.manual_seed(0)
    feats, text = _unit(torch.randn(5, 16)), _unit(torch.randn(2, 16))
    rfc = ResidualFeatureConnection(16, [4], alpha=1.0)
    assert torch.allclose(rfc(feats), F.normalize(rfc.mlp(feats), dim=-1))


def test_adapter_ignores_feature_scale():
    """Bias-free + ReLU: training on normalised cached features equals training on raw ones."""
    torch.manual_seed(1)
    raw = torch.randn(4, 16) * 7.5
    rfc = ResidualFeatureConnection(16, [4, 8], alpha=0.6)
    assert torch.allclose(rfc(raw), rfc(F.normalize(raw, dim=-1)), atol=1e-6)


def _toy(seed=0, n=40, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    labels = np.arange(n) % 2
    feats = _unit(centres[labels] + 0.8 * rng.normal(size=(n, dim))).numpy()
    # a text classifier that is wrong: swapped classes
    text = _unit(centres[::-1].copy()).numpy()
    return feats, labels, text


PARAMS = {"alphas": [0.0, 0.6, 1.0], "lr": 1e-2, "weight_decay": 0.0, "epochs": 30, "batch_size": 8, "hidden_divisors": [2, 4, 2]}


def test_fit_learns_and_selects_alpha_on_validation():
    feats, labels, text = _toy()
    data = FitData(feats[:20], labels[:20], feats[20:], labels[20:], text, 20.0)
    zs_acc = (predict(TextClassifier(torch.from_numpy(text), 20.0), feats[20:]).argmax(1) == labels[20:]).mean()
    state, info = fit("rfc", data, PARAMS, seed=0)
    head = build_head(state)
    acc = (predict(head, feats[20:]).argmax(1) == labels[20:]).mean()
    assert zs_acc < 0.5 < acc
    assert info["val_accuracy_by_alpha"][str(info["alpha"])] == max(info["val_accuracy_by_alpha"].values())
    assert info["alpha"] != 0.0


def test_fit_is_deterministic():
    feats, labels, text = _toy(3)
    data = FitData(feats[:20], labels[:20], feats[20:], labels[20:], text, 20.0)
    a, _ = fit("rfc", data, PARAMS, seed=4)
    b, _ = fit("rfc", data, PARAMS, seed=4)
    for key in a["mlp"]:
        assert torch.equal(a["mlp"][key], b["mlp"][key])


def test_head_round_trips_through_weights_only_load(tmp_path):
    feats, labels, text = _toy()
    data = FitData(feats[:20], labels[:20], feats[20:], labels[20:], text, 20.0)
    state, _ = fit("rfc", data, {**PARAMS, "alphas": [0.5], "epochs": 2}, seed=0)
    torch.save(state, tmp_path / "head.pt")
    from medtune.heads import load_head

    assert np.array_equal(predict(load_head(tmp_path / "head.pt"), feats), predict(build_head(state), feats))


def test_nan_loss_names_step_and_lr():
    feats, labels, text = _toy()
    feats = feats.copy()
    feats[0, 0] = np.nan
    data = FitData(feats[:20], labels[:20], feats[20:], labels[20:], text, 20.0)
    from medtune.training import TrainingError

    with pytest.raises(TrainingError, match=r"step \d+ \(learning rate 0.01\)"):
        fit("rfc", data, {**PARAMS, "batch_size": 64}, seed=0)


def _train_one_alpha(data, params, alpha, seed):
    """The plain loop, one alpha at a time: what the stacked training must reproduce."""
    from medtune.training import seed_everything

    gen = seed_everything(seed)
    head = RFCHead(ResidualFeatureConnection(data.train_features.shape[1], params["hidden_divisors"], alpha),
                   torch.as_tensor(data.class_text).float(), data.logit_scale)
    x, y = torch.from_numpy(data.train_features), torch.from_numpy(data.train_labels.astype(np.int64))
    optimizer = torch.optim.Adam(head.rfc.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    losses = []
    for _ in range(params["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), params["batch_size"]):
            sel = order[start : start + params["batch_size"]]
            loss = F.cross_entropy(head(x[sel]), y[sel])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return head.eval(), losses


def test_stacked_alphas_train_as_one_alpha_at_a_time():
    from medtune.methods.rfc import train_alphas

    feats, labels, text = _toy(5, n=44)
    data = FitData(feats[:30], labels[:30], feats[30:], labels[30:], text, 20.0)
    params = {**PARAMS, "alphas": [0.0, 0.3, 0.6, 1.0], "weight_decay": 1e-3, "epochs": 5}
    stacked = train_alphas(data, params, seed=2)
    for alpha, (head, losses) in zip(params["alphas"], stacked):
        alone, alone_losses = _train_one_alpha(data, params, alpha, seed=2)
        # the same maths; only float32 summation order differs, and training amplifies it a little
        assert losses[0] == pytest.approx(alone_losses[0], rel=1e-6)
        np.testing.assert_allclose(losses, alone_losses, rtol=2e-3, atol=1e-5)
        for key, value in alone.rfc.mlp.state_dict().items():
            torch.testing.assert_close(head.rfc.mlp.state_dict()[key], value, rtol=2e-3, atol=1e-4)
        torch.testing.assert_close(head(torch.from_numpy(feats)), alone(torch.from_numpy(feats)), rtol=2e-3, atol=2e-3)
