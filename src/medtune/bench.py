"""Performance benchmark: ``python -m medtune.bench`` (``make bench``).

Measures, in one run and side by side, the figures the pipeline's design rests on,
and prints each as ``name: measured (target ...) PASS/MISS``:

1. **encode once** — training RFC, the linear probe and CoOp for several fractions x
   seeds from features encoded once, vs re-encoding the training images through the
   image encoder every epoch: as the CLIPath public code does it (per-image PIL
   transform, autograd through the unfrozen encoder) and as re-encoding alone. All
   paths run the same methods, hyperparameters, subsets and seeds on a small synthetic
   dataset, and all are timed here; nothing is extrapolated.
2. **corrupted-evaluation throughput** — :func:`medtune.encode.encode_images` over all
   29 conditions (corrupt + encode on the device from the uint8 store, batched) as a
   fraction of the bare encoder's forward rate on the same, already prepared batches.
3. **DAG build** — ``snakemake -n`` on the full paper config, and a no-op ``-n`` on the
   embedded default after a completed run.
4. **embedded default end to end** — from Snakemake's benchmark files of the last
   ``make run``: summed job seconds, per-rule totals, the share spent starting Python and
   importing torch/open_clip, and the run's wall time from its log.
5. **scaling** — training seconds per run vs training fraction, from each run's
   ``train.json`` (one job fits every fraction of a seed), with a plot.

Targets live here, in the output; the tests only check that the measurements run.
Results go to ``results/bench/*.json`` and ``results/bench/summary.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# name -> (comparison, threshold, how the target prints)
TARGETS: dict[str, tuple[str, float, str]] = {
    "encode_once": (">=", 50.0, ">= 50x"),
    "corrupt_throughput": (">=", 0.8, ">= 0.8 of the bare encoder"),
    "dag_paper": ("<", 10.0, "< 10 s"),
    "noop_default": ("<", 10.0, "< 10 s"),
    "end_to_end": ("<=", 600.0, "<= 10 min wall"),
    "scaling": ("<", 1.0, "time ratio < images ratio"),
}

# The embedded default's method settings (config/config.yaml); read from there when present.
DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "linear_probe": {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "grid", "max_iter": 1000},
    "rfc": {"alphas": [0.2, 0.4, 0.6, 0.8, 1.0], "lr": 1e-3, "weight_decay": 5e-3, "epochs": 20, "batch_size": 64,
            "hidden_widths": ["d/4", 64, "d/4"], "final_relu": True},
    "coop": {"n_ctx": 4, "epochs": 10, "batch_size": 32, "lr": 0.05},
}
TEMPLATES = ["a histopathology image of {c}.", "an H&E stained patch of {c}."]


# ----------------------------------------------------------------------------- reporting


@dataclass
class Figure:
    key: str
    name: str
    value: float | None  # what the target compares; None: not measured
    shown: str  # the measurement as printed
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return TARGETS[self.key][2]

    @property
    def status(self) -> str:
        if self.value is None:
            return "N/A"
        return "PASS" if meets(self.key, self.value) else "MISS"

    def line(self) -> str:
        return f"{self.name}: {self.shown} (target {self.target}) {self.status}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "shown": self.shown, "target": self.target,
                "status": self.status, "details": self.details, **self.data}


def meets(key: str, value: float) -> bool:
    op, threshold, _ = TARGETS[key]
    return {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold, ">": value > threshold}[op]


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": datetime.now().isoformat(timespec="seconds"),
    }


def describe_machine(m: dict[str, Any]) -> str:
    gpu = m["gpu"] or "no GPU"
    load = f", load average at start {m['load_average'][0]:.1f}" if m.get("load_average") else ""
    return f"{m['cpu_cores']} CPU cores, {gpu}; Python {m['python']}, torch {m['torch']}{load}"


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for every model built without weights; the bench builds them on purpose."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ----------------------------------------------------------------------------- inputs


def make_backbone(arch: str = "medtune-tiny", image_size: int | None = None, device: str = "cpu"):
    """A randomly initialised backbone (no weights needed); ``image_size`` overrides the architecture's."""
    from medtune.models import Backbone, _open_clip, load_backbone

    with _quiet_open_clip():
        if image_size is None:
            return load_backbone(arch.lower(), {"arch": arch}, device=device)
        import torch

        torch.manual_seed(0)
        model = _open_clip().create_model(arch, force_image_size=image_size, output_dict=True)
    model.to(device).eval()
    pp = model.visual.preprocess_cfg
    return Backbone(arch.lower(), model, _open_clip().get_tokenizer(arch), int(image_size), tuple(pp["mean"]), tuple(pp["std"]))


def make_data(n_train: int, n_val: int, n_test: int, image_size: int = 64, seed: int = 0):
    """The synthetic H&E store (uint8 N x H x W x 3) and its sample table."""
    from medtune.data.synthetic import SyntheticSpec, generate

    sizes = {k: v for k, v in {"train": n_train, "val": n_val, "test": n_test}.items() if v > 0}
    return generate(SyntheticSpec(sizes=sizes, image_size=image_size, seed=seed))


def method_params(repo: Path = REPO) -> dict[str, dict[str, Any]]:
    path = repo / "config" / "config.yaml"
    methods = {k: dict(v) for k, v in DEFAULT_METHODS.items()}
    try:
        import yaml

        configured = (yaml.safe_load(path.read_text()) or {}).get("methods", {})
        for name in methods:
            methods[name].update(configured.get(name) or {})
    except (OSError, ValueError):
        pass
    return methods


# ----------------------------------------------------------------------------- 1. encode once


class NaiveEncoder:
    """Training images' features computed on demand, as a training loop without a feature cache does.

    ``style="reencode"``: the pipeline's batched tensor preprocessing from the uint8 store and
    no gradient through the encoder, so the only difference from the cached path is the
    re-encoding itself. ``style="public"``: what the CLIPath public code (ucdrubinet/CLIP_RFC)
    does every step: a PIL image and the model's PIL transform per image (its DataLoader, no
    workers), then ``encode_image`` with autograd on (the backbone was never frozen there, so
    ``backward`` runs through the image encoder too, although only the head is stepped).
    Features come back on the CPU, where the cached heads train.
    """

    def __init__(self, backbone, images: np.ndarray, device, style: str = "reencode", grad: bool = False) -> None:
        import torch

        if style not in ("reencode", "public"):
            raise ValueError(f"unknown naive style {style!r}")
        self.backbone, self.images, self.device = backbone, images, torch.device(device)
        self.style, self.grad = style, grad and style == "public"
        self.images_encoded = 0
        if style == "public":
            import open_clip

            self.transform = open_clip.image_transform(backbone.image_size, is_train=False, mean=backbone.mean, std=backbone.std)

    def _pixels(self, indices: np.ndarray):
        import torch

        from medtune.preprocess import normalize, resize_crop, to_device_batch

        if self.style == "public":
            from PIL import Image

            return torch.stack([self.transform(Image.fromarray(self.images[i])) for i in indices]).to(self.device)
        bb = self.backbone
        return normalize(resize_crop(to_device_batch(self.images[indices], self.device), bb.image_size), bb.mean, bb.std)

    def __call__(self, indices: np.ndarray):
        import torch
        import torch.nn.functional as F

        indices = np.asarray(indices)
        self.images_encoded += len(indices)
        # no_grad, not inference_mode: the features feed a head that is trained
        with torch.set_grad_enabled(self.grad), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            feats = self.backbone.model.encode_image(self._pixels(indices))
        return F.normalize(feats.float(), dim=-1).cpu()

    def many(self, indices: np.ndarray, batch_size: int):
        import torch

        with torch.no_grad():
            return torch.cat([self(indices[s : s + batch_size]) for s in range(0, len(indices), batch_size)]).detach()


class _PublicText:
    """The public code's class-prompt features, re-encoded (with autograd) at every step."""

    def __init__(self, backbone, class_names, device) -> None:
        from medtune.encode import class_prompts

        prompts = class_prompts(class_names, TEMPLATES)
        self.backbone, self.n = backbone, len(prompts)
        self.tokens = backbone.tokenizer([p for per in prompts for p in per]).to(device)

    def __call__(self):
        import torch.nn.functional as F

        feats = F.normalize(self.backbone.model.encode_text(self.tokens).float(), dim=-1)
        return F.normalize(feats.view(self.n, -1, feats.shape[-1]).mean(1), dim=-1).cpu()


def naive_rfc(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, class_text, scale, params, seed, batch_size,
              text: _PublicText | None = None):
    """:func:`medtune.methods.rfc.fit`, encoding each training batch every epoch (and, public-code style, the prompts too)."""
    import torch
    import torch.nn.functional as F

    from medtune.methods import accuracy
    from medtune.methods.rfc import ResidualFeatureConnection, RFCHead
    from medtune.training import seed_everything

    val_f = enc.many(val_idx, batch_size).numpy()  # once per run
    y = torch.tensor(np.asarray(train_labels), dtype=torch.int64)
    model = enc.backbone.model
    val_acc = {}
    for alpha in params["alphas"]:
        gen = seed_everything(seed)
        head = RFCHead(ResidualFeatureConnection(class_text.shape[1], params["hidden_widths"], alpha, params["final_relu"]),
                       torch.as_tensor(class_text).float(), scale)
        optimizer = torch.optim.Adam(head.rfc.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        for _ in range(params["epochs"]):
            order = torch.randperm(len(train_idx), generator=gen)
            for start in range(0, len(train_idx), params["batch_size"]):
                sel = order[start : start + params["batch_size"]]
                feats = enc(train_idx[sel.numpy()])
                logits = head(feats) if text is None else head.logit_scale * head.embed(feats) @ text().T
                loss = F.cross_entropy(logits, y[sel])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if text is not None or enc.grad:
                    model.zero_grad(set_to_none=True)  # gradients reached the backbone; only the head steps
        val_acc[alpha] = accuracy(head.eval(), val_f, val_labels)
    return max(val_acc.values())


def naive_linear_probe(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, class_text, scale, params, seed, batch_size):
    """The linear probe with its run's images encoded in the run (L-BFGS has no epochs to re-encode in)."""
    from medtune.methods import FitData, linear_probe

    data = FitData(enc.many(train_idx, batch_size).numpy(), np.asarray(train_labels), enc.many(val_idx, batch_size).numpy(),
                   np.asarray(val_labels), class_text, scale)
    _, info = linear_probe.fit(data, params, seed)
    return max(info["val_accuracy_by_C"].values(), default=None)


def upstream_prompt_features(model, learner):
    """CoOp's own ``TextEncoder`` (KaiyangZhou/CoOp, ``trainers/coop.py``): the whole context length through
    the text transformer, where :func:`medtune.methods.coop.encode_prompts` stops at the prompts' last EOS."""
    import torch
    import torch.nn.functional as F

    ctx = learner.ctx.unsqueeze(0).expand(len(learner.tokens), -1, -1)
    x = torch.cat([learner.token_prefix, ctx, learner.token_suffix], dim=1) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    x = x[torch.arange(x.shape[0]), learner.tokens.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def naive_coop(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, backbone, class_names, params, seed, batch_size):
    """:func:`medtune.methods.coop.fit_coop`, encoding each training batch every epoch (CoOp's image encoder is frozen).

    Public-code style, the prompts go through CoOp's own text encoder (the whole context length).
    """
    import torch
    import torch.nn.functional as F

    from medtune.methods.coop import DEFAULTS, PromptLearner, _logits, frozen, lr_at
    from medtune.training import seed_everything

    p = {**DEFAULTS, **params}
    model = backbone.model
    gen = seed_everything(seed)
    device = model.positional_embedding.device
    scale = float(backbone.logit_scale)
    best = None
    with frozen(model):
        learner = PromptLearner(model, backbone.tokenizer, class_names, p["n_ctx"], p["ctx_init"], p["ctx_std"], gen)
        prompts = (lambda: upstream_prompt_features(model, learner)) if enc.style == "public" else (lambda: learner(model))
        y = torch.tensor(np.asarray(train_labels), dtype=torch.int64).to(device)
        val_x = enc.many(val_idx, batch_size).to(device)  # once per run
        val_y = torch.tensor(np.asarray(val_labels), dtype=torch.int64).to(device)
        optimizer = torch.optim.SGD([learner.ctx], lr=lr_at(0, p), momentum=float(p["momentum"]),
                                    weight_decay=float(p["weight_decay"]))
        batch, epochs = int(p["batch_size"]), int(p["epochs"])
        n = len(train_idx)
        stop = n - n % batch if n >= batch else n
        text = prompts()  # as fit_coop: an epoch's last prompt features also serve the next epoch's first step
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, p)
            order = torch.randperm(n, generator=gen)
            for start in range(0, stop, batch):
                sel = order[start : start + batch]
                with torch.no_grad():
                    x = enc(train_idx[sel.numpy()]).to(device)
                loss = F.cross_entropy(_logits(x, text if text is not None else prompts(), scale), y[sel.to(device)])
                text = None
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.set_grad_enabled(epoch < epochs - 1):
                text = prompts()
            with torch.no_grad():
                acc = float((_logits(val_x, text.detach(), scale).argmax(1) == val_y).float().mean())
            best = acc if best is None else max(best, acc)
    return best


PATHS = ("cached", "reencode", "public")


def bench_encode_once(
    backbone,
    images: np.ndarray,
    samples,
    fractions: Sequence[float],
    seeds: Sequence[int],
    params: dict[str, dict[str, Any]],
    methods: Sequence[str] = ("rfc", "linear_probe", "coop"),
    device="cpu",
    batch_size: int = 256,
    log: Callable[[str], None] = lambda s: None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time every (method, fraction, seed) run from cached features and, right after it, the two naive ways.

    ``cached``: the pipeline (train and val encoded once, every fit from the arrays);
    ``reencode``: the training batch re-encoded every step (tensor preprocessing, no gradient);
    ``public``: as the CLIPath public code (per-image PIL transform, autograd through the unfrozen
    image encoder and, for RFC, the class prompts re-encoded every step).
    """
    import pandas as pd
    import torch

    from medtune.encode import class_prompts, encode_images, prompt_ensemble
    from medtune.methods import FitData, fit
    from medtune.methods.coop import fit_coop
    from medtune.subsets import stratified_subsets

    device = torch.device(device)
    train_rows = samples[samples["split"] == "train"].reset_index(drop=True)
    val_rows = samples[samples["split"] == "val"].reset_index(drop=True)
    class_names = samples[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"].tolist()
    # the class-prompt features: the same input to every path, made once (encode_text in the pipeline)
    class_text = prompt_ensemble(backbone, class_prompts(class_names, TEMPLATES), device)
    scale = backbone.logit_scale
    val_idx, val_labels = np.array(val_rows["index"]), np.array(val_rows["label"])
    encoders = {"reencode": NaiveEncoder(backbone, images, device, "reencode"),
                "public": NaiveEncoder(backbone, images, device, "public", grad=True)}
    public_text = _PublicText(backbone, class_names, device)

    def cached_encode():
        _sync(device)
        start = time.perf_counter()
        idx = np.concatenate([np.array(train_rows["index"]), val_idx])
        feats = encode_images(backbone, images, idx, ["clean"], device, batch_size, progress=False)["clean"]
        _sync(device)
        return feats, time.perf_counter() - start

    def one_run(path, method, p, seed, data, idx, labels):
        """Best validation accuracy of one fit along ``path``."""
        if path == "cached":
            if method == "coop":
                _, info = fit_coop(backbone, class_names, data, p, seed)
                return max((a for a in info["val_accuracy_by_epoch"] if a is not None), default=None)
            _, info = fit(method, data, p, seed)
            return max((info.get("val_accuracy_by_alpha") or info.get("val_accuracy_by_C") or {}).values(), default=None)
        enc = encoders[path]
        if method == "coop":
            return naive_coop(enc, idx, labels, val_idx, val_labels, backbone, class_names, p, seed, batch_size)
        if method == "rfc":
            return naive_rfc(enc, idx, labels, val_idx, val_labels, class_text, scale, p, seed, batch_size,
                             public_text if path == "public" else None)
        return naive_linear_probe(enc, idx, labels, val_idx, val_labels, class_text, scale, p, seed, batch_size)

    position = pd.Series(np.arange(len(train_rows)), index=np.array(train_rows["index"]))

    def run_data(subset, train_f, val_f):
        pos = position.loc[subset["index"]].to_numpy()
        idx, labels = np.array(subset["index"]), np.array(subset["label"])
        return FitData(train_f[pos], labels, val_f, val_labels, class_text, scale), idx, labels

    if warmup:  # first calls import sklearn, allocate, pick kernels: keep them out of the timings
        feats, _ = cached_encode()
        subset = stratified_subsets(train_rows[["index", "label"]], [min(fractions)], seeds[0])[min(fractions)]
        data, idx, labels = run_data(subset, feats[: len(train_rows)], feats[len(train_rows) :])
        for method in methods:
            p = {**params[method], "epochs": 1, **({"alphas": params[method]["alphas"][:1]} if method == "rfc" else {})}
            for path in PATHS:
                one_run(path, method, p, seeds[0], data, idx, labels)
        for enc in encoders.values():
            enc.images_encoded = 0

    # the cached path's only encoder work: the whole train split and val, once, as the encode_images rule does
    feats, cached_encode_s = cached_encode()
    train_f, val_f = feats[: len(train_rows)], feats[len(train_rows) :]
    cached_images = len(feats)

    runs = []
    for seed in seeds:
        subsets = stratified_subsets(train_rows[["index", "label"]], list(fractions), seed)
        for fraction in fractions:
            data, idx, labels = run_data(subsets[fraction], train_f, val_f)
            for method in methods:
                run = {"method": method, "seed": seed, "fraction": fraction, "n_train": len(idx)}
                for path in PATHS:
                    before = encoders[path].images_encoded if path in encoders else 0
                    _sync(device)
                    t0 = time.perf_counter()
                    acc = one_run(path, method, params[method], seed, data, idx, labels)
                    _sync(device)
                    run[f"{path}_s"] = time.perf_counter() - t0
                    run[f"{path}_val_accuracy"] = acc
                    if path in encoders:
                        run[f"{path}_images"] = encoders[path].images_encoded - before
                runs.append(run)
                log(f"  {method:12s} seed {seed} frac {fraction:>5g}% n={len(idx):4d}: cached {run['cached_s']:6.2f} s, "
                    f"re-encode {run['reencode_s']:6.2f} s, public-code style {run['public_s']:6.2f} s")

    per_method = {}
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        per_method[method] = {f"{p}_s": sum(r[f"{p}_s"] for r in rs) for p in PATHS}
        per_method[method]["naive_images"] = sum(r["reencode_images"] for r in rs)
    totals = {f"{p}_fit_s": sum(r[f"{p}_s"] for r in runs) for p in PATHS}
    cached_s = cached_encode_s + totals["cached_fit_s"]
    diffs = [abs(r["cached_val_accuracy"] - r["reencode_val_accuracy"]) for r in runs
             if r["cached_val_accuracy"] is not None and r["reencode_val_accuracy"] is not None]
    naive_images = encoders["reencode"].images_encoded
    return {
        "cached_encode_s": cached_encode_s,
        "cached_fit_s": totals["cached_fit_s"],
        "cached_s": cached_s,
        "reencode_s": totals["reencode_fit_s"],
        "public_s": totals["public_fit_s"],
        "ratio": totals["public_fit_s"] / cached_s,
        "ratio_reencode": totals["reencode_fit_s"] / cached_s,
        "cached_images": cached_images,
        "naive_images": naive_images,
        "images_ratio": naive_images / cached_images,
        "encode_rate_cached": cached_images / cached_encode_s,
        "per_method": per_method,
        "max_val_accuracy_difference": max(diffs, default=None),
        "runs": runs,
        "fractions": list(fractions),
        "seeds": list(seeds),
        "methods": list(methods),
        "params": {m: params[m] for m in methods},
        "n_train_pool": len(train_rows),
        "n_val": len(val_rows),
    }


def encode_once_figure(r: dict[str, Any]) -> Figure:
    details = [
        f"cached (the pipeline): encode {r['cached_images']} train + val images once {r['cached_encode_s']:.2f} s + fits "
        f"{r['cached_fit_s']:.2f} s = {r['cached_s']:.2f} s",
        f"re-encoding every epoch as the CLIPath public code does (per-image PIL transform, autograd through the unfrozen "
        f"encoder, prompts re-encoded every step): {r['public_s']:.2f} s = {r['ratio']:.1f}x",
        f"re-encoding alone (the pipeline's batched tensor preprocessing, no gradient): {r['reencode_s']:.2f} s = "
        f"{r['ratio_reencode']:.1f}x; {r['naive_images']} images through the encoder, {r['images_ratio']:.0f}x the cached path's",
    ]
    for m, v in r["per_method"].items():
        c = max(v["cached_s"], 1e-9)
        details.append(f"{m}: fits from cache {v['cached_s']:.2f} s vs re-encode {v['reencode_s']:.2f} s "
                       f"({v['reencode_s'] / c:.1f}x) vs public-code style {v['public_s']:.2f} s ({v['public_s'] / c:.1f}x)")
    epochs = {m: r["params"][m]["epochs"] for m in r["methods"] if "epochs" in r["params"][m]}
    details.append(f"{len(r['runs'])} runs: {', '.join(r['methods'])} x fractions {r['fractions']} % of {r['n_train_pool']} "
                   f"x seeds {r['seeds']}; epochs {epochs}")
    if r["max_val_accuracy_difference"] is not None:
        details.append(f"same models either way: best validation accuracies of cached and re-encoded runs differ by at most "
                       f"{r['max_val_accuracy_difference']:.3f}")
    return Figure("encode_once", "encode once (vs re-encoding every epoch, CLIPath public code)", r["ratio"],
                  f"{r['ratio']:.1f}x (re-encoding alone {r['ratio_reencode']:.1f}x)", details, {"result": r})


# ----------------------------------------------------------------------------- 2. corrupted evaluation


def bench_corrupt_throughput(
    backbone,
    images: np.ndarray,
    indices: np.ndarray,
    conditions: Sequence[str] | None = None,
    device="cpu",
    batch_size: int = 256,
    repeats: int = 2,
) -> dict[str, Any]:
    """encode_images over ``conditions`` vs the bare encoder's forward on the same prepared batches.

    The three measurements (encode_images, bare forward, corruptions alone) are interleaved
    ``repeats`` times and the fastest of each is kept, so a burst of other load on the
    machine does not land on one side only.
    """
    import torch

    from medtune.conditions import CONDITIONS
    from medtune.corrupt import apply_many
    from medtune.encode import encode_images
    from medtune.preprocess import normalize, resize_crop, to_device_batch

    conditions = list(conditions or CONDITIONS)
    device = torch.device(device)
    indices = np.asarray(indices)
    model, amp = backbone.model, device.type == "cuda"
    n = len(indices) * len(conditions)

    with torch.inference_mode():
        # warm-up: first calls allocate, pick kernels, build the markup grids
        encode_images(backbone, images, indices[: min(len(indices), 8)], conditions, device, batch_size, progress=False)
        _sync(device)

        # the same batches, already moved, resized and normalised, for the encoder forward alone
        keys, resized, prepared = [], [], []
        t0 = time.perf_counter()
        for s in range(0, len(indices), batch_size):
            idx = indices[s : s + batch_size]
            resized.append(resize_crop(to_device_batch(images[idx], device), backbone.image_size))
            keys.append(torch.as_tensor(idx, device=device))
        _sync(device)
        prepare_s = time.perf_counter() - t0
        prepared = [normalize(x, backbone.mean, backbone.std) for x in resized]
        _sync(device)

        full_s = bare_s = float("inf")
        per_condition = {c: float("inf") for c in conditions}
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            encode_images(backbone, images, indices, conditions, device, batch_size, progress=False)
            _sync(device)
            full_s = min(full_s, time.perf_counter() - t0)

            t0 = time.perf_counter()
            for _ in conditions:
                for x in prepared:
                    with torch.autocast(device.type, enabled=amp):
                        model.encode_image(x)
            _sync(device)
            bare_s = min(bare_s, time.perf_counter() - t0)

            # where the difference goes: the corruptions alone on the prepared batches, as encode_images runs them
            spent = dict.fromkeys(conditions, 0.0)
            for x, k in zip(resized, keys):
                corrupted = apply_many(x, conditions, keys=k)
                for condition in conditions:
                    t0 = time.perf_counter()
                    next(corrupted)
                    _sync(device)
                    spent[condition] += time.perf_counter() - t0
            per_condition = {c: min(per_condition[c], spent[c]) for c in conditions}

    return {
        "conditions": len(conditions),
        "images": len(indices),
        "image_size": backbone.image_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "full_s": full_s,
        "bare_s": bare_s,
        "prepare_s": prepare_s,
        "corrupt_s": sum(per_condition.values()),
        "full_rate": n / full_s,
        "bare_rate": n / bare_s,
        "ratio": bare_s / full_s,
        "per_condition_s": per_condition,
    }


def corrupt_figure(r: dict[str, Any]) -> Figure:
    corrupt_s = r["corrupt_s"]
    by_kind: dict[str, float] = {}
    for c, s in r["per_condition_s"].items():
        by_kind[c.split("-")[0]] = by_kind.get(c.split("-")[0], 0.0) + s
    top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:4]
    details = [
        f"{r['conditions']} conditions x {r['images']} images at {r['image_size']} px, batch {r['batch_size']}, best of "
        f"{r['repeats']}: "
        f"encode_images {r['full_s']:.2f} s ({r['full_rate']:.0f} img/s) vs bare forward {r['bare_s']:.2f} s "
        f"({r['bare_rate']:.0f} img/s)",
        f"corruptions alone {corrupt_s:.2f} s ({corrupt_s / r['full_s']:.0%} of encode_images); "
        f"moving + resizing the batches once {r['prepare_s']:.2f} s",
        "slowest corruptions (all severities): " + ", ".join(f"{k} {s:.2f} s" for k, s in top),
    ]
    return Figure("corrupt_throughput", "corrupted-evaluation throughput (29 conditions)", r["ratio"],
                  f"{r['ratio']:.2f} of the bare encoder", details, {"result": r})


# ----------------------------------------------------------------------------- 3. DAG build


def snakemake_cmd(repo: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), *args]


def job_count(output: str) -> int | None:
    """Total jobs from the 'Job stats' table of ``snakemake -n``; 0 when there is nothing to be done."""
    m = re.search(r"^total\s+(\d+)\s*$", output, re.M)
    if m:
        return int(m.group(1))
    return 0 if "Nothing to be done" in output else None


def dry_run_reasons(output: str) -> dict[str, str]:
    """The 'Reasons:' block of ``snakemake -n``: why jobs would run -> which rules."""
    block = output.split("\nReasons:", 1)[1] if "\nReasons:" in output else ""
    reasons, current = {}, None
    for line in block.splitlines():
        text = line.strip()
        if not text or text.startswith("(check"):
            continue
        if not line.startswith("    ") or text.startswith(("This was a dry-run", "Some jobs")):
            break
        if line.startswith("        ") and current:
            reasons[current] = text
        elif text.endswith(":"):
            current = text[:-1]
    return reasons


def timed(cmd: list[str], cwd: Path | None = None, log_path: Path | None = None) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(out)
    return seconds, proc.returncode, out


def bench_dag_paper(repo: Path, configfile: Path, cores: int = 2) -> dict[str, Any]:
    """``snakemake -n`` on ``configfile`` in a temporary working directory."""
    with tempfile.TemporaryDirectory(prefix="medtune-bench-dag-") as tmp:
        config = Path(tmp) / configfile.name
        shutil.copy(configfile, config)
        seconds, rc, out = timed(snakemake_cmd(repo, "-n", "--directory", tmp, "--configfile", str(config), "--cores", str(cores)))
    return {"config": str(configfile), "seconds": seconds, "returncode": rc, "jobs": job_count(out), "tail": out[-2000:] if rc else ""}


def dag_paper_figure(r: dict[str, Any]) -> Figure:
    if r["returncode"] != 0 or r["jobs"] is None:
        return Figure("dag_paper", "DAG build, paper config", None, f"snakemake -n failed (exit {r['returncode']})",
                      [r["tail"][-500:]], {"result": r})
    return Figure("dag_paper", "DAG build, paper config", r["seconds"], f"{r['seconds']:.1f} s for {r['jobs']} jobs",
                  [f"snakemake -n --configfile {Path(r['config']).name} in a temporary folder, interpreter start included"],
                  {"result": r})


def bench_noop_default(repo: Path, workdir: Path, cores: int = 2, run_first: bool = False, log_dir: Path | None = None) -> dict[str, Any]:
    """``snakemake -n`` on the embedded default in ``workdir``; optionally ``snakemake`` (the whole default) first."""
    result: dict[str, Any] = {"ran_default": False, "workdir": str(workdir)}
    where = ("--directory", str(workdir), "--cores", str(cores))
    if run_first:
        seconds, rc, _ = timed(snakemake_cmd(repo, *where), cwd=workdir,
                               log_path=(log_dir / "default_run.log") if log_dir else None)
        result.update(ran_default=True, default_run_s=seconds, default_run_returncode=rc)
    seconds, rc, out = timed(snakemake_cmd(repo, "-n", *where), cwd=workdir)
    result.update(seconds=seconds, returncode=rc, pending_jobs=job_count(out), nothing_to_do="Nothing to be done" in out,
                  reasons=dry_run_reasons(out), tail=out[-2000:] if rc else "")
    return result


def noop_figure(r: dict[str, Any]) -> Figure:
    name = "no-op re-run, embedded default"
    if r["returncode"] != 0:
        return Figure("noop_default", name, None, f"snakemake -n failed (exit {r['returncode']})", [r["tail"][-500:]], {"result": r})
    if not r["nothing_to_do"]:
        why = "; ".join(f"{k}: {v}" for k, v in r.get("reasons", {}).items())
        return Figure("noop_default", name, None,
                      f"not measured: the embedded default in {r['workdir']} is not up to date ({r['pending_jobs']} jobs to do; "
                      f"that `snakemake -n` took {r['seconds']:.1f} s)",
                      ["run `make run` first, or pass --with-default-run to run it from here"] + ([f"why: {why}"] if why else []),
                      {"result": r})
    details = ["`snakemake -n` says nothing to be done; interpreter start included"]
    if r.get("ran_default"):
        details.append(f"the default was run first here: {r['default_run_s']:.0f} s (exit {r['default_run_returncode']})")
    return Figure("noop_default", name, r["seconds"], f"{r['seconds']:.1f} s", details, {"result": r})


# ----------------------------------------------------------------------------- 4. end to end


def read_benchmarks(root: Path):
    """One row per Snakemake benchmark file under ``root``: rule (first folder), path, and its columns."""
    import pandas as pd

    frames = []
    for path in sorted(root.rglob("*.tsv")):
        try:
            table = pd.read_csv(path, sep="\t")
        except (OSError, ValueError):
            continue
        if "s" not in table.columns or table.empty:
            continue
        row = table.iloc[[-1]].copy()  # a file repeats a job only with `repeat()`; keep the last
        rel = path.relative_to(root)
        row.insert(0, "path", str(rel))
        row.insert(0, "rule", rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        frames.append(row)
    if not frames:
        return pd.DataFrame(columns=["rule", "path", "s"])
    return pd.concat(frames, ignore_index=True)


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", re.M)
_DONE = re.compile(r"^(\d+) of (\d+) steps \((\d+)%\) done", re.M)


def parse_log(path: Path) -> dict[str, Any] | None:
    """Wall time (first to last timestamp) and step counts of one Snakemake log; None without steps."""
    text = path.read_text(errors="replace")
    stamps = [datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y") for s in _STAMP.findall(text)]
    done = _DONE.findall(text)
    if not stamps or not done:
        return None
    last_done, total, _ = (int(x) for x in done[-1])
    # a run that made the datasets ran from scratch; one that did not only re-ran what had changed
    from_scratch = re.search(r"^(local)?rule prepare_dataset:", text, re.M) is not None
    return {"log": str(path), "wall_s": (stamps[-1] - stamps[0]).total_seconds(), "steps_done": last_done, "steps": total,
            "complete": last_done == total, "from_scratch": from_scratch, "started": stamps[0].isoformat()}


def last_run_log(log_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the newest complete run, from scratch if there is one; the newest run of any kind) among Snakemake's logs."""
    runs = [r for r in (parse_log(p) for p in sorted(log_dir.glob("*.snakemake.log"))) if r is not None]
    complete = [r for r in runs if r["complete"]]
    scratch = [r for r in complete if r["from_scratch"]]
    best = scratch[-1] if scratch else (complete[-1] if complete else None)
    return best, (runs[-1] if runs else None)


# What each kind of job imports before its work starts (its script's imports, measured the same way).
STARTUP_IMPORTS = {
    "data": "import medtune.data.sources, medtune.subsets",
    "frozen fit": "import medtune.train",  # torch, scikit-learn, pandas: linear probe, RFC, zero-shot evaluation
    "model": "import torch, open_clip, medtune.encode, medtune.train",  # jobs that build an open_clip model
}


def startup_kind(rule: str, path: str) -> str:
    """Which of STARTUP_IMPORTS a benchmarked job pays, from its rule and benchmark path."""
    if rule in ("prepare_dataset", "subsample"):
        return "data"
    if rule == "evaluate" or (rule == "train" and "/coop/" not in f"/{path}" and "/finetune_" not in f"/{path}"):
        return "frozen fit"
    return "model"


def time_imports(repeats: int = 3, statement: str = STARTUP_IMPORTS["model"]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_end_to_end(results: Path, workdir: Path, import_repeats: int = 3,
                     imports: dict[str, str] | None = None) -> dict[str, Any]:
    """Snakemake's benchmark files under ``results`` and the logs of the runs in ``workdir``."""
    table = read_benchmarks(results / "benchmarks")
    complete, newest = last_run_log(workdir / ".snakemake" / "log")
    out: dict[str, Any] = {"benchmark_files": len(table), "last_complete_run": complete, "newest_run": newest}
    if table.empty:
        return out
    per_rule = table.groupby("rule")["s"].agg(["count", "sum", "mean"]).sort_values("sum", ascending=False)
    kinds = [startup_kind(rule, path) for rule, path in zip(table["rule"], table["path"])]
    statements = imports or STARTUP_IMPORTS
    import_s = {kind: time_imports(import_repeats, statements[kind]) for kind in sorted(set(kinds))}
    startup_s = sum(import_s[kind] for kind in kinds)
    job_s = float(table["s"].sum())
    out.update(
        job_seconds=job_s,
        per_rule={rule: {"jobs": int(r["count"]), "seconds": float(r["sum"]), "mean_s": float(r["mean"])} for rule, r in per_rule.iterrows()},
        import_s=import_s,
        jobs_by_kind={kind: kinds.count(kind) for kind in import_s},
        startup_s=startup_s,
        startup_share=startup_s / job_s if job_s else None,
        max_rss_mb=float(table["max_rss"].max()) if "max_rss" in table else None,
    )
    return out


def end_to_end_figure(r: dict[str, Any]) -> Figure:
    name = "embedded default end to end"
    details = []
    if r["benchmark_files"]:
        details.append(f"{r['benchmark_files']} benchmarked jobs, {r['job_seconds']:.0f} s summed: " + ", ".join(
            f"{rule} {v['seconds']:.0f} s ({v['jobs']} jobs, {v['mean_s']:.1f} s each)" for rule, v in r["per_rule"].items()))
        per_kind = ", ".join(f"{r['jobs_by_kind'][k]} {k} jobs x {s:.1f} s" for k, s in r["import_s"].items())
        details.append(f"outside model compute: starting Python + each job's imports ({per_kind}) = {r['startup_s']:.0f} s, "
                       f"{r['startup_share']:.0%} of the summed job seconds")
    else:
        details.append("no Snakemake benchmark files under results/benchmarks: run `make run` first")
    complete, newest = r["last_complete_run"], r["newest_run"]
    if newest is not None and (complete is None or newest["log"] != complete["log"]):
        state = "a partial re-run" if newest["complete"] else f"not complete ({newest['steps_done']} of {newest['steps']} steps)"
        details.append(f"a later run ({Path(newest['log']).name}) is {state}: {newest['steps']} jobs, {newest['wall_s']:.0f} s wall")
    if complete is None:
        return Figure("end_to_end", name, None, "no complete run in .snakemake/log (run `make run` first)", details, {"result": r})
    kind = "run from scratch" if complete["from_scratch"] else "run (a partial re-run: no run from scratch in the logs)"
    details.insert(0, f"wall time of the last complete {kind} ({Path(complete['log']).name}, {complete['steps']} jobs), "
                      "first to last log timestamp")
    return Figure("end_to_end", name, complete["wall_s"], f"{complete['wall_s'] / 60:.1f} min wall", details, {"result": r})


# ----------------------------------------------------------------------------- 5. scaling


_RUN = re.compile(r"^(?P<dataset>[^/]+)/(?P<method>[^/]+)/(?P<backbone>[^/]+)/seed(?P<seed>\d+)/frac(?P<fraction>[\d.]+)/train\.json$")


def bench_scaling(results: Path) -> dict[str, Any]:
    """Mean training seconds per run by (dataset, backbone, method, fraction), with training set sizes.

    A run's time is the fit's wall time from its ``train.json``: a frozen-backbone job fits
    every fraction of a seed, so its Snakemake benchmark covers them all (reported alongside).
    """
    import pandas as pd

    root = results / "runs"
    rows = []
    for path in sorted(root.rglob("train.json")) if root.exists() else []:
        m = _RUN.match(path.relative_to(root).as_posix())
        if not m:
            continue
        try:
            record = json.loads(path.read_text())
            seconds, n_train = float(record["wall_seconds"]), record.get("n_train")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        d = m.groupdict()
        rows.append({**d, "seed": int(d["seed"]), "fraction": float(d["fraction"]), "s": seconds, "n_train": n_train})
    if not rows:
        return {"rows": [], "summary": [], "jobs": {}}
    table = pd.DataFrame(rows)
    grouped = (table.groupby(["dataset", "backbone", "method", "fraction"])
               .agg(s=("s", "mean"), n_train=("n_train", "mean"), seeds=("seed", "nunique")).reset_index())
    jobs = read_benchmarks(results / "benchmarks" / "train")
    per_job = {}
    for (dataset, backbone, method), g in grouped.groupby(["dataset", "backbone", "method"]):
        mine = jobs[jobs["path"].str.startswith(f"{dataset}/{method}/{backbone}/seed")] if not jobs.empty else jobs
        if len(mine):
            per_job[method] = {"jobs": int(len(mine)), "mean_s": float(mine["s"].mean())}
    summary = []
    for (dataset, backbone, method), g in grouped.groupby(["dataset", "backbone", "method"]):
        g = g.sort_values("fraction")
        lo, hi = g.iloc[0], g.iloc[-1]
        if len(g) < 2:
            continue
        images = hi["n_train"] / lo["n_train"] if lo["n_train"] and hi["n_train"] else hi["fraction"] / lo["fraction"]
        summary.append({"dataset": dataset, "backbone": backbone, "method": method, "low": float(lo["fraction"]),
                        "high": float(hi["fraction"]), "s_low": float(lo["s"]), "s_high": float(hi["s"]),
                        "time_ratio": float(hi["s"] / lo["s"]), "images_ratio": float(images)})
    return {"rows": grouped.to_dict("records"), "summary": summary, "jobs": per_job}


def plot_scaling(r: dict[str, Any], out: Path) -> Path | None:
    if not r["rows"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame(r["rows"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, backbone, method), g in table.groupby(["dataset", "backbone", "method"]):
        g = g.sort_values("fraction")
        ax.plot(g["fraction"], g["s"], marker="o", label=f"{method} ({backbone}, {dataset})")
    ax.set_xscale("log")
    ax.set_xlabel("training fraction (%)")
    ax.set_ylabel("seconds per training run (mean over seeds)")
    ax.set_ylim(bottom=0)
    ax.set_title("Training time vs fraction (train.json of each run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def scaling_figure(r: dict[str, Any], plot: Path | None) -> Figure:
    name = "scaling, training time per run vs fraction"
    if not r["summary"]:
        return Figure("scaling", name, None, "no train.json records under results/runs (run `make run` first)", [], {"result": r})
    details = [f"{s['method']}: {s['s_low']:.2f} s at {s['low']:g}% -> {s['s_high']:.2f} s at {s['high']:g}%, "
               f"time x{s['time_ratio']:.1f} for x{s['images_ratio']:.0f} the images" for s in r["summary"]]
    details.append("a run's time is its fit (wall_seconds in train.json); one Snakemake job fits every fraction of a seed: "
                   + ", ".join(f"{m} {v['mean_s']:.1f} s a job ({v['jobs']} jobs)" for m, v in r.get("jobs", {}).items()))
    if plot is not None:
        with contextlib.suppress(ValueError):
            plot = plot.relative_to(Path.cwd())
        details.append(f"plot: {plot}")
    worst = max(s["time_ratio"] / s["images_ratio"] for s in r["summary"])
    shown = "time x" + "/".join(f"{s['time_ratio']:.1f}" for s in r["summary"]) + " (" + "/".join(s["method"] for s in r["summary"]) \
        + f") for x{r['summary'][0]['images_ratio']:.0f} the images"
    return Figure("scaling", name, worst, shown, details, {"result": r})


# ----------------------------------------------------------------------------- main


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")


def summary_markdown(figures: list[Figure], settings: dict[str, Any], m: dict[str, Any], seconds: float) -> str:
    end_load = f" (load average at the end {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    lines = ["## Performance", "", f"`make bench` (`python -m medtune.bench`) on {describe_machine(m)}; the bench itself took "
             f"{seconds:.0f} s{end_load}. Settings: {settings['summary']}.", "", "```"]
    lines += [f.line() for f in figures] + ["```", ""]
    for f in figures:
        lines.append(f"* **{f.name}** — {f.status}")
        lines += [f"  * {d}" for d in f.details]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medtune.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--backbone", default="medtune-tiny", help="open_clip architecture, built with random weights (e.g. RN50)")
    p.add_argument("--image-size", type=int, default=None, help="model input size (default: the architecture's own)")
    p.add_argument("--batch-size", type=int, default=256, help="encoding batch size (the pipeline's)")
    p.add_argument("--data-size", type=int, default=64, help="side of the synthetic store's images (resized to the model's)")
    p.add_argument("--n-train", type=int, default=300, help="train split of the synthetic store")
    p.add_argument("--n-val", type=int, default=75)
    p.add_argument("--n-test", type=int, default=256, help="images encoded under every condition (figure 2)")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 10.0, 50.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of RFC and CoOp in figure 1 (default: as config/config.yaml, like every other setting)")
    p.add_argument("--methods", nargs="+", default=["rfc", "linear_probe", "coop"], choices=["rfc", "linear_probe", "coop"])
    p.add_argument("--only", nargs="+", choices=["encode", "corrupt", "dag", "end_to_end", "scaling"], default=None,
                   help="run only these figures")
    p.add_argument("--repo", type=Path, default=REPO, help="the workflow's folder (Snakefile, config/)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the embedded default runs (snakemake --directory; its results/ and .snakemake/log); default: REPO")
    p.add_argument("--results", type=Path, default=None, help="the embedded default's results (default: WORKDIR/results)")
    p.add_argument("--out", type=Path, default=None, help="where the bench writes (default: RESULTS/bench)")
    p.add_argument("--paper-config", type=Path, default=None, help="default: REPO/config/paper/all.yaml")
    p.add_argument("--with-default-run", action="store_true", help="run the embedded default (snakemake) before the no-op check")
    p.add_argument("--cores", type=int, default=2, help="--cores for snakemake")
    p.add_argument("--import-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on the CPU; 1 (as the pipeline's training jobs) keeps timings stable on a shared "
                        "machine, 0 for torch's default (all cores)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    args = parse_args(argv)
    repo = args.repo.resolve()
    workdir = (args.workdir or repo).resolve()
    results = (args.results or workdir / "results").resolve()
    out = (args.out or results / "bench").resolve()
    only = set(args.only or ["encode", "corrupt", "dag", "end_to_end", "scaling"])
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    import torch

    from medtune.training import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
        with contextlib.suppress(ImportError):  # scikit-learn's BLAS/OpenMP pools too (the linear probe)
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
    settings_threads = torch.get_num_threads()

    device = resolve_device(args.device) if {"encode", "corrupt"} & only else None
    m = machine()
    settings = {"device": str(device), "threads": settings_threads, "backbone": args.backbone, "image_size": args.image_size,
                "batch_size": args.batch_size, "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
                "data_size": args.data_size, "fractions": args.fractions, "seeds": args.seeds, "epochs": args.epochs,
                "methods": args.methods, "summary": "figures 3-5 only (no model run)"}
    log(f"medtune bench on {describe_machine(m)}")
    figures: list[Figure] = []

    if {"encode", "corrupt"} & only:
        t0 = time.perf_counter()
        backbone = make_backbone(args.backbone, args.image_size, str(device))
        images, samples = make_data(args.n_train if "encode" in only else 0, args.n_val if "encode" in only else 0,
                                    args.n_test if "corrupt" in only else 0, args.data_size)
        settings["image_size"] = backbone.image_size
        log(f"random {args.backbone} at {backbone.image_size} px on {device}, {len(images)} synthetic {args.data_size} px images "
            f"({time.perf_counter() - t0:.1f} s to build)")
        settings["summary"] = (f"{args.backbone} (random weights) at {backbone.image_size} px on {device} "
                               f"({settings_threads} torch thread{'s' if settings_threads > 1 else ''}), encode batch {args.batch_size}")

    if "encode" in only:
        params = method_params(repo)
        if args.epochs:
            for name in ("rfc", "coop"):
                params[name]["epochs"] = args.epochs
        epochs = ", ".join(f"{name} {params[name]['epochs']}" for name in ("rfc", "coop") if name in args.methods)
        log(f"[1/5] encode once: {args.methods} x fractions {args.fractions} x seeds {args.seeds}, epochs: {epochs}")
        r = bench_encode_once(backbone, images, samples, args.fractions, args.seeds, params, args.methods, device,
                              args.batch_size, log=log)
        figures.append(encode_once_figure(r))
        write_json(figures[-1].to_json(), out / "encode_once.json")
        log(figures[-1].line())
        settings["summary"] += (f"; figure 1: {args.n_train} train + {args.n_val} val images, fractions {args.fractions} %, "
                                f"seeds {args.seeds}, epochs: {epochs}")

    if "corrupt" in only:
        log(f"[2/5] corrupted evaluation: {args.n_test} images x 29 conditions")
        test_idx = np.array(samples.loc[samples["split"] == "test", "index"])
        r = bench_corrupt_throughput(backbone, images, test_idx, None, device, args.batch_size)
        figures.append(corrupt_figure(r))
        write_json(figures[-1].to_json(), out / "corrupt_throughput.json")
        log(figures[-1].line())
        settings["summary"] += f"; figure 2: {args.n_test} images x 29 conditions"

    if "dag" in only:
        paper = (args.paper_config or repo / "config" / "paper" / "all.yaml").resolve()
        log(f"[3/5] DAG build: snakemake -n on {paper.name}; no-op re-run of the embedded default")
        figures.append(dag_paper_figure(bench_dag_paper(repo, paper, args.cores)))
        log(figures[-1].line())
        figures.append(noop_figure(bench_noop_default(repo, workdir, args.cores, args.with_default_run, out)))
        log(figures[-1].line())
        write_json({f.key: f.to_json() for f in figures[-2:]}, out / "dag.json")

    if "end_to_end" in only:
        log("[4/5] embedded default end to end, from results/benchmarks and .snakemake/log")
        figures.append(end_to_end_figure(bench_end_to_end(results, workdir, args.import_repeats)))
        write_json(figures[-1].to_json(), out / "end_to_end.json")
        log(figures[-1].line())

    if "scaling" in only:
        log("[5/5] scaling: results/runs/**/train.json")
        r = bench_scaling(results)
        plot = plot_scaling(r, out / "scaling.png")
        figures.append(scaling_figure(r, plot))
        write_json(figures[-1].to_json(), out / "scaling.json")
        log(figures[-1].line())

    seconds = time.perf_counter() - started
    text = summary_markdown(figures, settings, m, seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    write_json({"machine": m, "settings": settings, "seconds": seconds,
                "figures": {f.key: {"value": f.value, "shown": f.shown, "target": f.target, "status": f.status} for f in figures}},
               out / "bench.json")
    print()
    print(text)
    print(f"written: {out}/summary.md and *.json")
    return figures


if __name__ == "__main__":
    main()
