"""Figure 1, encode once: fits from features encoded once vs re-encoding the training images every epoch.

Every (method, fraction, seed) run is timed along three paths, right after one another:

* ``cached``: the pipeline (train and val encoded once, every fit from the arrays);
* ``reencode``: the training batch re-encoded every step (tensor preprocessing, no gradient);
* ``public``: as the CLIPath public code (per-image PIL transform, autograd through the unfrozen
  image encoder and, for RFC, the class prompts re-encoded every step).

The two re-encoding paths are :mod:`medtune.bench.public_code`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from medtune.bench.figure import Figure
from medtune.bench.machine import sync
from medtune.bench.public_code import NaiveEncoder, PublicText, naive_coop, naive_linear_probe, naive_rfc

PATHS = ("cached", "reencode", "public")


class _Runner:
    """One store, backbone and validation split; runs a method's fit along any of :data:`PATHS`."""

    def __init__(self, backbone, images: np.ndarray, samples, templates: Sequence[str], device, batch_size: int) -> None:
        import pandas as pd

        from medtune.encode import class_prompts, prompt_ensemble
        from medtune.heads import fit
        from medtune.methods.coop import fit_coop

        self.fit, self.fit_coop = fit, fit_coop  # imported here, not in the timed calls
        self.backbone, self.images, self.device, self.batch_size = backbone, images, device, batch_size
        self.train_rows = samples[samples["split"] == "train"].reset_index(drop=True)
        self.val_rows = samples[samples["split"] == "val"].reset_index(drop=True)
        self.class_names = samples[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"].tolist()
        # the class-prompt features: the same input to every path, made once (encode_text in the pipeline)
        self.class_text = prompt_ensemble(backbone, class_prompts(self.class_names, templates), device)
        self.scale = backbone.logit_scale
        self.val_idx, self.val_labels = np.array(self.val_rows["index"]), np.array(self.val_rows["label"])
        self.encoders = {"reencode": NaiveEncoder(backbone, images, device, "reencode"),
                         "public": NaiveEncoder(backbone, images, device, "public", grad=True)}
        self.public_text = PublicText(backbone, self.class_names, templates, device)
        self.position = pd.Series(np.arange(len(self.train_rows)), index=np.array(self.train_rows["index"]))

    def cached_encode(self):
        """Train + val features, encoded once as the encode_images rule does, and the seconds it took."""
        from medtune.encode import encode_images

        sync(self.device)
        start = time.perf_counter()
        idx = np.concatenate([np.array(self.train_rows["index"]), self.val_idx])
        feats = encode_images(self.backbone, self.images, idx, ["clean"], self.device, self.batch_size, progress=False)["clean"]
        sync(self.device)
        return feats, time.perf_counter() - start

    def run_data(self, subset, train_f, val_f):
        """The cached path's FitData for one subset, and the subset's store indices and labels for the others."""
        from medtune.heads import FitData

        pos = self.position.loc[subset["index"]].to_numpy()
        idx, labels = np.array(subset["index"]), np.array(subset["label"])
        return FitData(train_f[pos], labels, val_f, self.val_labels, self.class_text, self.scale), idx, labels

    def one_run(self, path: str, method: str, p: dict[str, Any], seed: int, data, idx, labels):
        """Best validation accuracy of one fit along ``path``."""
        if path == "cached":
            if method == "coop":
                _, info = self.fit_coop(self.backbone, self.class_names, data, p, seed)
                return max((a for a in info["val_accuracy_by_epoch"] if a is not None), default=None)
            _, info = self.fit(method, data, p, seed)
            return max((info.get("val_accuracy_by_alpha") or info.get("val_accuracy_by_C") or {}).values(), default=None)
        enc, val = self.encoders[path], (self.val_idx, self.val_labels)
        if method == "coop":
            return naive_coop(enc, idx, labels, *val, self.backbone, self.class_names, p, seed, self.batch_size)
        if method == "rfc":
            return naive_rfc(enc, idx, labels, *val, self.class_text, self.scale, p, seed, self.batch_size,
                             self.public_text if path == "public" else None)
        return naive_linear_probe(enc, idx, labels, *val, self.class_text, self.scale, p, seed, self.batch_size)

    def warm_up(self, fractions, seed: int, params, methods) -> None:
        """First calls import sklearn, allocate, pick kernels: one epoch of everything, kept out of the timings."""
        from medtune.subsets import stratified_subsets

        feats, _ = self.cached_encode()
        n = len(self.train_rows)
        subset = stratified_subsets(self.train_rows[["index", "label"]], [min(fractions)], seed)[min(fractions)]
        data, idx, labels = self.run_data(subset, feats[:n], feats[n:])
        for method in methods:
            p = {**params[method], "epochs": 1, **({"alphas": params[method]["alphas"][:1]} if method == "rfc" else {})}
            for path in PATHS:
                self.one_run(path, method, p, seed, data, idx, labels)
        for enc in self.encoders.values():
            enc.images_encoded = 0

    def timed_run(self, method: str, p: dict[str, Any], seed: int, fraction: float, data, idx, labels) -> dict[str, Any]:
        """One run along every path: seconds, best validation accuracy and (re-encoding paths) images encoded."""
        run = {"method": method, "seed": seed, "fraction": fraction, "n_train": len(idx)}
        for path in PATHS:
            before = self.encoders[path].images_encoded if path in self.encoders else 0
            sync(self.device)
            t0 = time.perf_counter()
            acc = self.one_run(path, method, p, seed, data, idx, labels)
            sync(self.device)
            run[f"{path}_s"] = time.perf_counter() - t0
            run[f"{path}_val_accuracy"] = acc
            if path in self.encoders:
                run[f"{path}_images"] = self.encoders[path].images_encoded - before
        return run


def bench_encode_once(
    backbone,
    images: np.ndarray,
    samples,
    fractions: Sequence[float],
    seeds: Sequence[int],
    params: dict[str, dict[str, Any]],
    templates: Sequence[str],
    methods: Sequence[str] = ("rfc", "linear_probe", "coop"),
    device="cpu",
    batch_size: int = 256,
    log: Callable[[str], None] = lambda s: None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time every (method, fraction, seed) run from cached features and, right after it, the two naive ways.

    ``params``: each method's settings (a validated config's ``methods``); ``templates``: the
    class-prompt templates.
    """
    import torch

    from medtune.subsets import stratified_subsets

    device = torch.device(device)
    runner = _Runner(backbone, images, samples, templates, device, batch_size)
    if warmup:
        runner.warm_up(fractions, seeds[0], params, methods)

    # the cached path's only encoder work: the whole train split and val, once, as the encode_images rule does
    feats, cached_encode_s = runner.cached_encode()
    n_pool = len(runner.train_rows)
    train_f, val_f = feats[:n_pool], feats[n_pool:]

    runs = []
    for seed in seeds:
        subsets = stratified_subsets(runner.train_rows[["index", "label"]], list(fractions), seed)
        for fraction in fractions:
            data, idx, labels = runner.run_data(subsets[fraction], train_f, val_f)
            for method in methods:
                run = runner.timed_run(method, params[method], seed, fraction, data, idx, labels)
                runs.append(run)
                log(f"  {method:12s} seed {seed} frac {fraction:>5g}% n={len(idx):4d}: cached {run['cached_s']:6.2f} s, "
                    f"re-encode {run['reencode_s']:6.2f} s, public-code style {run['public_s']:6.2f} s")

    return {
        **_totals(runs, methods, cached_encode_s, len(feats), runner.encoders["reencode"].images_encoded),
        "runs": runs,
        "fractions": list(fractions),
        "seeds": list(seeds),
        "methods": list(methods),
        "params": {m: params[m] for m in methods},
        "n_train_pool": n_pool,
        "n_val": len(runner.val_rows),
    }


def _totals(runs: list[dict[str, Any]], methods: Sequence[str], cached_encode_s: float, cached_images: int,
            naive_images: int) -> dict[str, Any]:
    """The runs summed per path and per method; the figure's ratios."""
    per_method = {}
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        per_method[method] = {f"{p}_s": sum(r[f"{p}_s"] for r in rs) for p in PATHS}
        per_method[method]["naive_images"] = sum(r["reencode_images"] for r in rs)
    totals = {f"{p}_fit_s": sum(r[f"{p}_s"] for r in runs) for p in PATHS}
    cached_s = cached_encode_s + totals["cached_fit_s"]
    diffs = [abs(r["cached_val_accuracy"] - r["reencode_val_accuracy"]) for r in runs
             if r["cached_val_accuracy"] is not None and r["reencode_val_accuracy"] is not None]
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
