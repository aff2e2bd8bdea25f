"""train_frozen: one job fits every subset (fractions and shots) of a seed, after one untimed warm-up fit."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medtune import methods as method_registry
from medtune.adapt import train_frozen

RECORDING_METHOD = '''
import json, os
import numpy as np
import torch
from torch import nn

SPEC = {"training": "frozen", "label": "recording", "defaults": {}, "params": {}}


def fit(data, params, seed):
    with open(os.environ["FIT_CALLS"], "a") as fh:
        fh.write(json.dumps(len(data.train_labels)) + "\\n")
    return {"weight": torch.as_tensor(np.asarray(data.class_text, dtype=np.float32))}, {}


def build_head(state):
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0], bias=False)
    head.weight.data.copy_(state["weight"])
    return head
'''


def _write_cache(root, n_classes=2, splits=None, dim=8):
    """What train_frozen reads: samples.csv, {train,val,test}/clean.npy, text.npz."""
    rng = np.random.default_rng(0)
    splits = splits or {"train": 40, "val": 10, "test": 12}
    samples = pd.DataFrame({"split": np.repeat(list(splits), list(splits.values()))})
    samples.insert(0, "index", np.arange(len(samples)))
    samples["label"] = samples["index"] % n_classes
    samples["label_name"] = [f"class{label}" for label in samples["label"]]
    samples["caption"], samples["group"] = "", "g"
    samples.to_csv(root / "samples.csv", index=False)
    centres = rng.normal(size=(n_classes, dim))
    for split, n in splits.items():
        (root / split).mkdir()
        labels = samples.loc[samples["split"] == split, "label"].to_numpy()
        feats = (centres[labels] + rng.normal(scale=0.8, size=(n, dim))).astype(np.float32)
        np.save(root / split / "clean.npy", feats / np.linalg.norm(feats, axis=1, keepdims=True))
    text = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    np.savez(root / "text.npz", classifier=text, class_names=np.array([f"class{c}" for c in range(n_classes)]), logit_scale=10.0)
    return samples


def _write_subsets(root, samples, sizes):
    """``{subset name: csv}`` of the first n training images (classes alternate)."""
    train = samples[samples["split"] == "train"]
    subsets = {}
    for name, n in sizes:
        train.iloc[:n][["index", "label"]].to_csv(root / f"{name}.csv", index=False)
        subsets[name] = root / f"{name}.csv"
    return subsets


def _run_labels(name, subsets):
    return [{"dataset": "d", "method": name, "backbone": "b", "seed": 1,
             "fraction": float(s[4:]) if s.startswith("frac") else None,
             "shots": int(s[5:]) if s.startswith("shots") else None} for s in subsets]


def test_the_first_fit_is_an_untimed_warm_up_on_the_smallest_subset(tmp_path, monkeypatch):
    samples = _write_cache(tmp_path)
    # the larger first: the warm-up must still take the smallest, a shot count here
    subsets = _write_subsets(tmp_path, samples, [("frac50", 20), ("frac10", 4), ("shots1", 2)])
    (tmp_path / "recording.py").write_text(RECORDING_METHOD)
    monkeypatch.setenv("FIT_CALLS", str(tmp_path / "calls.jsonl"))
    method = {"name": "recording", "module": str(tmp_path / "recording.py"), "params": {}, "train_conditions": "clean",
              "needs_text_encoder": False}
    train_frozen(method, _run_labels("recording", subsets), subsets, tmp_path / "out", tmp_path / "train", tmp_path / "val",
                 tmp_path / "text.npz", tmp_path / "samples.csv", tmp_path / "test", progress=False)

    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().split()]
    assert calls == [2, 20, 4, 2]  # warm-up on the smallest subset, then every subset in order
    for name, n in (("frac50", 20), ("frac10", 4), ("shots1", 2)):
        record = json.loads((tmp_path / "out" / name / "train.json").read_text())
        assert record["n_train"] == n and record["wall_seconds"] >= 0


# every registered frozen method that trains from features alone (CoOp runs the text encoder:
# tests/test_coop.py), with its epochs cut for speed
FROZEN = [name for name, m in method_registry.registered([]).items() if m.training == "frozen" and not m.needs_text_encoder]
QUICK = {"epochs": 2, "search_step": [10, 10], "steps_per_decade": 1, "C_range": [1e-2, 1e2], "k": 3}


@pytest.mark.parametrize("name", FROZEN)
def test_the_warm_up_leaves_every_frozen_methods_fits_as_they_were(tmp_path, monkeypatch, name):
    """Each method's heads with the warm-up fit are those without it: the warm-up works for
    the method and takes nothing from the fits that count (no unseeded random state)."""
    import medtune.adapt as adapt

    assert {"linear_probe", "rfc", "knn", "simpleshot", "clip_adapter", "tip_adapter", "tip_adapter_f"} <= set(FROZEN)
    registered = method_registry.registered([])[name]
    samples = _write_cache(tmp_path, n_classes=3, splits={"train": 60, "val": 15, "test": 12}, dim=16)
    subsets = _write_subsets(tmp_path, samples, [("frac50", 30), ("shots2", 6)])
    params = {**registered.defaults, **{k: v for k, v in QUICK.items() if k in registered.defaults}}
    method = {"name": name, "module": registered.source, "params": params, "train_conditions": "clean", "needs_text_encoder": False}
    real_fit = adapt.fit

    def heads(out, skip_warm_up):
        calls = []

        def fit(module, data, params, seed):
            calls.append(len(data.train_labels))
            if skip_warm_up and len(calls) == 1:
                return None, None  # what train_frozen does with the warm-up's result: nothing
            return real_fit(module, data, params, seed)

        monkeypatch.setattr(adapt, "fit", fit)
        train_frozen(method, _run_labels(name, subsets), subsets, out, tmp_path / "train", tmp_path / "val",
                     tmp_path / "text.npz", tmp_path / "samples.csv", tmp_path / "test", progress=False)
        assert calls == [6, 30, 6]
        return {s: torch.load(out / s / "head.pt", weights_only=True) for s in subsets}

    warmed, cold = heads(tmp_path / "warm", False), heads(tmp_path / "cold", True)
    for subset in subsets:
        _assert_same(warmed[subset], cold[subset], subset)
        metrics = pd.read_csv(tmp_path / "warm" / subset / "metrics.csv")
        assert {"accuracy", "balanced_accuracy", "ece15"} <= set(metrics["metric"])


def _assert_same(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_transductive_stage_refines_the_base_run_of_each_subset(tmp_path):
    """TransCLIP's job: each run reads the head of its base's run with the same seed and subset and
    takes that run's training images as support; on zero-shot (no subset) its files go straight
    into the output folder."""
    from medtune.heads import load_head, predict
    from medtune.methods import transclip

    samples = _write_cache(tmp_path, n_classes=2, splits={"train": 40, "val": 10, "test": 30}, dim=8)
    subsets = _write_subsets(tmp_path, samples, [("frac50", 20), ("shots2", 4)])
    probe = {"name": "linear_probe", "module": "medtune.methods.linear_probe", "train_conditions": "clean", "needs_text_encoder": False,
             "params": {**method_registry.registered()["linear_probe"].defaults, "C_range": [0.1, 10.0], "steps_per_decade": 1}}
    common = dict(train_dir=tmp_path / "train", val_dir=tmp_path / "val", text=tmp_path / "text.npz", samples=tmp_path / "samples.csv",
                  test_dir=tmp_path / "test", progress=False)
    train_frozen(probe, _run_labels("linear_probe", subsets), subsets, tmp_path / "base", **common)
    stage = {"name": "transclip", "module": "medtune.methods.transclip", "train_conditions": "clean", "needs_text_encoder": False,
             "params": {k: v for k, v in transclip.SPEC["defaults"].items() if k != "methods"}}
    train_frozen(stage, _run_labels("linear_probe+transclip", subsets), subsets, tmp_path / "stage", base_outputs=[tmp_path / "base"], **common)

    test = np.load(tmp_path / "test" / "clean.npy")
    for name, n in (("frac50", 20), ("shots2", 4)):
        state = torch.load(tmp_path / "stage" / name / "head.pt", weights_only=True)
        base = torch.load(tmp_path / "base" / name / "head.pt", weights_only=True)
        assert torch.equal(state["base"]["weight"], base["weight"]) and len(state["support_labels"]) == n
        record = json.loads((tmp_path / "stage" / name / "train.json").read_text())
        assert record["method"] == "linear_probe+transclip" and record["n_train"] == n and record["chosen"]["gamma"] in (0.002, 0.01, 0.02, 0.2)
        saved = np.load(tmp_path / "stage" / name / "predictions.npz")
        np.testing.assert_allclose(saved["logits"], predict(load_head(tmp_path / "stage" / name / "head.pt"), test), rtol=1e-5, atol=1e-6)

    from medtune.methods import zeroshot
    from medtune.io import save_torch
    from medtune.records import write_manifest

    (tmp_path / "zs").mkdir()
    save_torch({**zeroshot.state(np.load(tmp_path / "text.npz")["classifier"], 10.0)}, tmp_path / "zs" / "head.pt")
    zs_run = {"dataset": "d", "method": "zeroshot", "backbone": "b", "seed": None, "fraction": None, "shots": None}
    write_manifest([{**zs_run, "files": {"head": "head.pt"}}], tmp_path / "zs")
    train_frozen(stage, [{**zs_run, "method": "zeroshot+transclip"}], {"": None}, tmp_path / "zs_stage", base_outputs=[tmp_path / "zs"], **common)
    assert {p.name for p in (tmp_path / "zs_stage").iterdir()} == {"head.pt", "train.json", "metrics.csv", "predictions.npz", "runs.json"}
    assert "support" not in torch.load(tmp_path / "zs_stage" / "head.pt", weights_only=True)
