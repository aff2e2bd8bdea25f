import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.methods import FitData, build_head, fit, predict
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
    from medtune.methods import load_head

    assert np.array_equal(predict(load_head(tmp_path / "head.pt"), feats), predict(build_head(state), feats))


def test_nan_loss_names_step_and_lr():
    feats, labels, text = _toy()
    feats = feats.copy()
    feats[0, 0] = np.nan
    data = FitData(feats[:20], labels[:20], feats[20:], labels[20:], text, 20.0)
    from medtune.training import TrainingError

    with pytest.raises(TrainingError, match=r"step \d+ \(learning rate 0.01\)"):
        fit("rfc", data, {**PARAMS, "batch_size": 64}, seed=0)
