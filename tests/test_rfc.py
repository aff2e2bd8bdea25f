import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtune.heads import FitData, build_head, fit, predict
from medtune.methods.rfc import ResidualFeatureConnection, RFCHead, bottleneck
from medtune.methods.zeroshot import TextClassifier


def _unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_bottleneck_is_upstreams_network():
    """CLIP_RFC's CustomCLIP.fc: d -> d/4 -> 64 -> d/4 -> d, no bias, a ReLU after every layer."""
    for dim, quarter in ((1024, 256), (512, 128)):  # 512-d ViTs: the middle is 64, not d/16 = 32
        mlp = bottleneck(dim, ["d/4", 64, "d/4"])
        sizes = [m.weight.shape for m in mlp if isinstance(m, torch.nn.Linear)]
        assert sizes == [(quarter, dim), (64, quarter), (quarter, 64), (dim, quarter)]
        assert all(m.bias is None for m in mlp if isinstance(m, torch.nn.Linear))
        assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU"] * 4
    assert not isinstance(bottleneck(64, [8], final_relu=False)[-1], torch.nn.ReLU)


def test_defaults_are_upstream():
    from medtune.methods.rfc import SPEC

    assert SPEC["defaults"]["hidden_widths"] == ["d/4", 64, "d/4"] and SPEC["defaults"]["final_relu"] is True


@pytest.mark.parametrize("bad", ["d/0", "4", "d*4", 0, 2.5, True])
def test_bad_width_is_refused_by_name(bad):
    from medtune.methods.rfc import resolve_widths

    with pytest.raises(ValueError, match="rfc hidden width"):
        resolve_widths(64, [bad])


def test_alpha_zero_gives_zero_shot_logits_exactly():
    torch.manual_seed(0)
    feats, text = _unit(torch.randn(7, 32)), _unit(torch.randn(3, 32))
    rfc = RFCHead(ResidualFeatureConnection(32, ["d/4", 64, "d/4"], alpha=0.0), text, 42.0)
    zs = TextClassifier(text, 42.0)
    assert torch.equal(rfc(feats), zs(feats))


def test_alpha_one_uses_only_the_adapter():
    torch.manual_seed(0)
    feats = _unit(torch.randn(5, 16))
    rfc = ResidualFeatureConnection(16, [4], alpha=1.0)
    assert torch.allclose(rfc(feats), F.normalize(rfc.mlp(feats), dim=-1))


def test_mix_is_not_renormalised():
    """Upstream feeds alpha * n(mlp(f)) + (1 - alpha) * n(f) to the logits as it is: its norm is below 1."""
    torch.manual_seed(2)
    feats = _unit(torch.randn(6, 16))
    rfc = ResidualFeatureConnection(16, ["d/4", 64, "d/4"], alpha=0.4)
    expected = 0.4 * F.normalize(rfc.mlp(feats), dim=-1) + 0.6 * feats
    torch.testing.assert_close(rfc(feats), expected)
    assert (rfc(feats).norm(dim=-1) < 1 - 1e-3).all()


def test_adapter_ignores_feature_scale():
    """Bias-free + ReLU (the last one too): training on normalised cached features equals training on raw ones."""
    torch.manual_seed(1)
    raw = torch.randn(4, 16) * 7.5
    head = RFCHead(ResidualFeatureConnection(16, ["d/4", 64, "d/4"], alpha=0.6), _unit(torch.randn(3, 16)), 30.0)
    torch.testing.assert_close(head(raw), head(F.normalize(raw, dim=-1)), atol=1e-5, rtol=1e-5)


def _toy(seed=0, n=40, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    labels = np.arange(n) % 2
    feats = _unit(centres[labels] + 0.8 * rng.normal(size=(n, dim))).numpy()
    # a text classifier that is wrong: swapped classes
    text = _unit(centres[::-1].copy()).numpy()
    return feats, labels, text


PARAMS = {"alphas": [0.0, 0.6, 1.0], "lr": 1e-2, "weight_decay": 0.0, "epochs": 30, "batch_size": 8,
          "hidden_widths": ["d/2", 4, "d/2"], "final_relu": True}


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


# ---- an independent reference: CLIP_RFC's CustomCLIP written out from its definition, one alpha at a time


def _upstream_mlp(dim: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(dim, dim // 4, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(dim // 4, 64, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(64, dim // 4, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(dim // 4, dim, bias=False), torch.nn.ReLU(),
    )


def _upstream_logits(mlp, features, text, alpha, logit_scale):
    """CustomCLIP.forward: exp(logit_scale) * (a * n(fc(f)) + (1 - a) * n(f)) @ n(t).T, no renormalisation.

    n(v) = v / max(|v|, 1e-12): upstream divides by |v| alone, which is 0 / 0 = NaN when the
    last ReLU zeroes a whole output (it happens on these small toy networks); the pipeline
    documents that it keeps such a term at 0 instead.
    """
    def n(v):
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    pred, image, text = n(mlp(features)), n(features), n(text)
    return logit_scale * (alpha * pred + (1 - alpha) * image) @ text.t()


def _upstream_from_saved(state: dict) -> torch.nn.Sequential:
    """The saved adapter's weights loaded into the upstream network (layers in index order)."""
    dim = state["class_text"].shape[1]
    mlp = _upstream_mlp(dim)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    saved = sorted(state["mlp"].items(), key=lambda kv: int(kv[0].split(".")[0]))
    assert [tuple(v.shape) for _, v in saved] == [tuple(m.weight.shape) for m in linears]
    with torch.no_grad():
        for layer, (_, weight) in zip(linears, saved):
            layer.weight.copy_(weight)
    return mlp


def _train_upstream_alone(data, params, alpha, seed):
    """CustomCLIP.train on cached features for one alpha: Adam over fc, cross-entropy, the
    pipeline's seeding (global seed before the network is built, a generator for the batches)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mlp = _upstream_mlp(data.train_features.shape[1])
    text = torch.as_tensor(data.class_text).float()
    x, y = torch.from_numpy(data.train_features), torch.from_numpy(data.train_labels.astype(np.int64))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    losses = []
    for _ in range(params["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), params["batch_size"]):
            sel = order[start : start + params["batch_size"]]
            loss = F.cross_entropy(_upstream_logits(mlp, x[sel], text, alpha, data.logit_scale), y[sel])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return mlp.eval(), losses


UPSTREAM = {**PARAMS, "hidden_widths": ["d/4", 64, "d/4"], "final_relu": True}


def test_stacked_alphas_train_as_upstream_one_alpha_at_a_time():
    from medtune.methods.rfc import train_alphas

    feats, labels, text = _toy(5, n=44, dim=32)
    data = FitData(feats[:30], labels[:30], feats[30:], labels[30:], text, 20.0)
    params = {**UPSTREAM, "alphas": [0.0, 0.3, 0.6, 1.0], "weight_decay": 1e-3, "epochs": 5, "lr": 3e-3}
    stacked = train_alphas(data, params, seed=2)
    x, t = torch.from_numpy(feats), torch.from_numpy(text)
    for alpha, (head, losses) in zip(params["alphas"], stacked):
        alone, alone_losses = _train_upstream_alone(data, params, alpha, seed=2)
        # the same maths; only float32 summation order differs, and training amplifies it a little
        assert losses[0] == pytest.approx(alone_losses[0], rel=1e-6)
        np.testing.assert_allclose(losses, alone_losses, rtol=2e-3, atol=1e-5)
        ours = [m.weight for m in head.rfc.mlp if isinstance(m, torch.nn.Linear)]
        for got, want in zip(ours, [m.weight for m in alone if isinstance(m, torch.nn.Linear)]):
            torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(head(x), _upstream_logits(alone, x, t, alpha, 20.0), rtol=2e-3, atol=2e-3)
        if alpha > 0:
            assert losses[-1] < losses[0]  # it trained


def _write_cache(root, feats, labels, text, scale, n_train, n_val):
    """The files train_frozen reads: samples.csv, features/{train,val,test}/clean.npy, text.npz, a subset."""
    import pandas as pd

    n = len(feats)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    samples = pd.DataFrame({"index": np.arange(n), "split": split, "label": labels,
                            "label_name": np.where(labels == 0, "normal", "tumor"), "group": "all", "caption": ""})
    samples.to_csv(root / "samples.csv", index=False)
    for name in ("train", "val", "test"):
        (root / name).mkdir()
        np.save(root / name / "clean.npy", feats[split == name])
    np.savez(root / "text.npz", classifier=text, logit_scale=np.float32(scale))
    samples[split == "train"][["index", "label"]].to_csv(root / "subset.csv", index=False)
    return samples


def test_upstream_definition_reproduces_the_pipelines_saved_head_and_metrics(tmp_path):
    """The upstream network and logits, applied to a saved head.pt and the cached features,
    give the pipeline head's logits, the accuracy in metrics.csv and the validation
    accuracy train.json records for the chosen alpha."""
    import json

    import pandas as pd

    from medtune.adapt import train_frozen

    feats, labels, text = _toy(7, n=120, dim=128)
    # cached features are normalised; these are not, which the definition must not mind
    feats = feats * np.random.default_rng(0).uniform(0.5, 3.0, size=(len(feats), 1)).astype(np.float32)
    samples = _write_cache(tmp_path, feats, labels, text, 20.0, n_train=60, n_val=30)
    params = {**UPSTREAM, "alphas": [0.2, 0.6, 1.0], "epochs": 40, "lr": 3e-3}
    out = tmp_path / "runs"
    method = {"module": "medtune.methods.rfc", "params": params, "train_conditions": "clean", "needs_text_encoder": False}
    run = {"dataset": "toy", "method": "rfc", "backbone": "b", "seed": 0, "fraction": 50.0}
    train_frozen(method, [run], {"frac50": tmp_path / "subset.csv"}, out, tmp_path / "train", tmp_path / "val",
                 tmp_path / "text.npz", tmp_path / "samples.csv", tmp_path / "test", progress=False)

    state = torch.load(out / "frac50" / "head.pt", weights_only=True)
    mlp = _upstream_from_saved(state)
    alpha, t = state["alpha"], torch.from_numpy(text)
    test = samples["split"] == "test"
    x_test, y_test = torch.from_numpy(feats[test.to_numpy()]), labels[test.to_numpy()]
    with torch.no_grad():
        reference = _upstream_logits(mlp, x_test, t, alpha, 20.0)
    from medtune.heads import load_head

    torch.testing.assert_close(torch.from_numpy(predict(load_head(out / "frac50" / "head.pt"), x_test.numpy())), reference,
                               rtol=1e-5, atol=1e-5)
    metrics = pd.read_csv(out / "frac50" / "metrics.csv")
    row = metrics[(metrics["condition"] == "clean") & (metrics["group"] == "all") & (metrics["metric"] == "accuracy")]
    reference_acc = float((reference.argmax(1).numpy() == y_test).mean())
    assert float(row["value"].iloc[0]) == reference_acc
    assert reference_acc > 0.7  # the text classifier alone is wrong on every class: the adapter learned

    val = (samples["split"] == "val").to_numpy()
    with torch.no_grad():
        val_acc = float((_upstream_logits(mlp, torch.from_numpy(feats[val]), t, alpha, 20.0).argmax(1).numpy() == labels[val]).mean())
    chosen = json.loads((out / "frac50" / "train.json").read_text())["chosen"]
    assert chosen["val_accuracy_by_alpha"][str(alpha)] == val_acc == max(chosen["val_accuracy_by_alpha"].values())


def test_head_from_before_the_upstream_fix_is_refused():
    state = {"module": "medtune.methods.rfc", "alpha": 0.5, "hidden_divisors": [4, 16, 4], "mlp": {}, "class_text": torch.zeros(2, 8),
             "logit_scale": 1.0}
    with pytest.raises(ValueError, match="hidden_divisors"):
        build_head(state)


def test_functional_adam_is_torch_adam_bit_for_bit():
    """RFC's optimiser skips torch.optim.Adam's class (which imports torch._dynamo), not its maths."""
    from medtune.training import FunctionalAdam

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen)]
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 5, generator=gen)

    def train(make_optimizer):
        w, b = (t.clone().requires_grad_() for t in start)
        optimizer = make_optimizer([w, b])
        for step in range(25):
            loss = ((x @ w.T + (b.sum() if step % 3 else 0) - y) ** 2).mean()  # b gets no gradient every 3rd step
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return w.detach(), b.detach()

    ours = train(lambda p: FunctionalAdam(p, lr=0.05, weight_decay=0.01))
    reference = train(lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01))
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)


def test_an_rfc_fit_imports_neither_dynamo_nor_scikit_learn():
    import subprocess
    import sys

    code = """
import sys, numpy as np
from medtune.heads import FitData, fit
x = np.eye(8, dtype=np.float32)[np.arange(32) % 8]
y = np.arange(32) % 2
fit("rfc", FitData(x, y, x, y, np.eye(2, 8, dtype=np.float32), 10.0),
    {"alphas": [0.5], "lr": 1e-3, "weight_decay": 0.0, "epochs": 1, "batch_size": 8, "hidden_widths": ["d/4"], "final_relu": True}, 0)
print(sorted(m for m in ("torch._dynamo", "sklearn", "scipy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _train_steps(make_optimizer, set_lr=None, steps=25, after_step=None):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen)]
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 5, generator=gen)
    w, b = (t.clone().requires_grad_() for t in start)
    optimizer = make_optimizer([w, b])
    for step in range(steps):
        if set_lr:
            set_lr(optimizer, step)
        loss = ((x @ w.T + (b.sum() if step % 3 else 0) - y) ** 2).mean()  # b gets no gradient every 3rd step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step:
            after_step(optimizer)
    return w.detach(), b.detach()


def test_functional_sgd_is_torch_sgd_bit_for_bit_with_the_lr_changed_between_steps():
    """CLIP-Adapter's optimiser (Dassl's SGD, its lr set every epoch) without the class."""
    from medtune.training import FunctionalSGD

    def every_fifth(lr):
        return 0.1 * (0.5 ** (lr // 5))

    def set_group_lr(optimizer, step):
        for group in optimizer.param_groups:
            group["lr"] = every_fifth(step)

    def set_lr(optimizer, step):
        optimizer.lr = every_fifth(step)

    ours = _train_steps(lambda p: FunctionalSGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4), set_lr)
    reference = _train_steps(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4), set_group_lr)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)


def test_functional_adamw_under_cosine_lrs_is_torch_adamw_with_cosine_annealing_bit_for_bit():
    """Tip-Adapter-F's optimiser and schedule (AdamW, CosineAnnealingLR stepped every step) without the classes."""
    from medtune.training import FunctionalAdam, cosine_lrs

    steps = 40  # past T_max: the schedule's rising half and its special step are covered too
    lrs = cosine_lrs(1e-2, 15, steps)
    ours = _train_steps(lambda p: FunctionalAdam(p, lr=1e-2, eps=1e-4, weight_decay=0.01, decoupled=True),
                        lambda optimizer, step: setattr(optimizer, "lr", lrs[step]), steps)
    seen, schedulers = [], []

    def reference_optimizer(params):
        optimizer = torch.optim.AdamW(params, lr=1e-2, eps=1e-4, weight_decay=0.01)
        schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 15))
        return optimizer

    def reference_schedule(optimizer):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr the step just used
        schedulers[0].step()

    reference = _train_steps(reference_optimizer, steps=steps, after_step=reference_schedule)
    assert seen == lrs
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)
