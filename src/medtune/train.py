"""Training entry points of the workflow: load cached features, fit a method, save its head."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from medtune.data.store import DatasetError, read_samples
from medtune.evaluate import evaluate_features
from medtune.io import atomic_dir, save_torch, write_csv, write_json
from medtune.methods import FitData, fit, load_head
from medtune.methods import zeroshot
from medtune.conditions import AUGMENTED
from medtune.plan import AUGMENTED_SUFFIX, base_method
from medtune.training import Stopwatch, cost_record, resolve_device


def load_text(path) -> tuple[np.ndarray, float]:
    with np.load(path) as text:
        return text["classifier"], float(text["logit_scale"])


def zeroshot_head(text_path, head_out) -> None:
    classifier, scale = load_text(text_path)
    save_torch(zeroshot.state(classifier, scale), head_out)


def split_features(features_dir, samples: pd.DataFrame, split: str, condition: str = "clean") -> tuple[np.ndarray, pd.DataFrame]:
    """Features of a split under a condition, and its rows (features are stored in samples.csv row order)."""
    rows = samples[samples["split"] == split].reset_index(drop=True)
    features = np.load(Path(features_dir) / f"{condition}.npy", mmap_mode="r")
    if len(features) != len(rows):
        raise DatasetError(f"{features_dir}/clean.npy has {len(features)} rows, split {split!r} has {len(rows)}")
    return features, rows


def subset_positions(rows: pd.DataFrame, subset_path) -> np.ndarray:
    subset = pd.read_csv(subset_path)
    position = pd.Series(np.arange(len(rows)), index=rows["index"].to_numpy())
    missing = subset.loc[~subset["index"].isin(position.index), "index"]
    if len(missing):
        raise DatasetError(f"{subset_path}: sample {int(missing.iloc[0])} is not in the train split")
    return position.loc[subset["index"]].to_numpy()


def train_frozen(
    method: str,
    params: dict[str, Any],
    seed: int,
    subsets: Mapping[str, Any],
    out_dir,
    train_dir,
    val_dir,
    text,
    samples,
    test_dir,
    conditions=("clean",),
    run: dict | None = None,
    backbone: dict | None = None,
    prompts: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> None:
    """Fit a frozen-backbone method on cached features for every training fraction of one
    seed (``subsets``: fraction -> subset CSV), and evaluate each fit on the test conditions.

    Writes ``out_dir/frac{fraction}/{head.pt,train.json,metrics.csv}``, the whole folder at
    once. One job covers all fractions because a fit from cached features takes about a
    second, less than starting Python and importing torch and scikit-learn. CoOp also needs
    the frozen text encoder (``backbone``: name, spec, weights) to back-propagate into its
    context; the others need features alone.
    """
    table = read_samples(samples)
    train_features, train_rows = split_features(train_dir, table, "train")
    val_features, val_rows = split_features(val_dir, table, "val")
    augmented = None
    if method.endswith(AUGMENTED_SUFFIX):
        augmented, _ = split_features(train_dir, table, "train", AUGMENTED)
    val_x, val_y = np.array(val_features), val_rows["label"].to_numpy()
    classifier, scale = load_text(text)
    test_rows = table[table["split"] == "test"]
    test_features = {c: np.load(Path(test_dir) / f"{c}.npy", mmap_mode="r") for c in conditions}
    dev = resolve_device(device if method == "coop" else "cpu")
    coop_model = _coop_backbone(backbone, dev) if method == "coop" else None
    with atomic_dir(out_dir) as tmp:
        for fraction, subset in tqdm(subsets.items(), desc=f"{method} seed {seed}", disable=not progress):
            picked = subset_positions(train_rows, subset)  # indexing by positions copies out of the memory map
            train_x, train_y = train_features[picked], train_rows["label"].to_numpy()[picked]
            if augmented is not None:
                # each training image twice: clean, and under its own corruption
                train_x, train_y = np.concatenate([train_x, augmented[picked]]), np.concatenate([train_y, train_y])
            data = FitData(
                train_features=train_x,
                train_labels=train_y,
                val_features=val_x,
                val_labels=val_y,
                class_text=classifier,
                logit_scale=scale,
            )
            clock = Stopwatch()
            if method == "coop":
                state, info = _fit_coop(data, params, seed, coop_model, prompts, table)
            else:
                state, info = fit(base_method(method), data, params, seed)
            seconds = clock.seconds
            trainable = sum(v.numel() for k, v in _tensors(state) if k != "class_text")
            run_dir = tmp / f"frac{fraction}"
            save_torch(state, run_dir / "head.pt")
            record = {"method": method, "seed": seed, "n_train": int(len(picked)), "chosen": info, "params": params}
            record.update(cost_record(dev, seconds, trainable, len(picked) * params.get("epochs", 1)))
            write_json(record, run_dir / "train.json")
            # evaluate what was saved, on the test features loaded once for all fractions
            head = load_head(run_dir / "head.pt")
            metrics = evaluate_features(head, test_features, test_rows, {**(run or {}), "fraction": float(fraction)})
            write_csv(metrics, run_dir / "metrics.csv")


def _coop_backbone(backbone: dict, device):
    from medtune.models import load_backbone

    return load_backbone(backbone["name"], backbone["spec"], weights=backbone.get("weights"), device=str(device))


def _fit_coop(data: FitData, params, seed, model, prompts: dict, table: pd.DataFrame):
    from medtune.methods.coop import fit_coop

    names = table[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"]
    words = [(prompts or {}).get("classnames", {}).get(n, n) for n in names]
    return fit_coop(model, words, data, params, seed)


def _tensors(state: dict, prefix: str = ""):
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from _tensors(value, prefix + key + ".")


def train_finetune(
    method: str,
    params: dict[str, Any],
    seed: int,
    backbone_name: str,
    backbone_spec: dict,
    backbone_weights,
    dataset_dir,
    subset,
    prompts: dict,
    conditions,
    weights_out,
    head_out,
    record_out,
    metrics_out,
    run: dict,
    state_dir=None,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Full fine-tuning of one run, then evaluation of the kept model and its WiSE-FT mixes.

    Fine-tuning changes the image encoder, so unlike the frozen methods this job
    re-encodes the test split (every condition) with its own encoder.
    """
    from medtune.data.store import load_dataset
    from medtune.encode import class_prompts, encode_images, prompt_ensemble
    from medtune.evaluate import evaluate_features
    from medtune.methods.finetune import finetune, wise_ft
    from medtune.models import load_backbone
    from medtune.training import count_trainable, seed_everything

    dev = resolve_device(device)
    seed_everything(seed)
    dataset = load_dataset(dataset_dir)
    train_rows = dataset.split("train")
    train_rows = train_rows.iloc[subset_positions(train_rows.reset_index(drop=True), subset)]
    val_rows, test_rows = dataset.split("val"), dataset.split("test")
    backbone = load_backbone(backbone_name, backbone_spec, weights=backbone_weights, device=str(dev))
    text = "caption" if method.endswith("caption") else "label"
    settings = {**params, "text": text, "templates": prompts["templates"], "classnames": prompts.get("classnames") or {}}
    clock = Stopwatch()
    pretrained, kept, info = finetune(backbone, dataset.images, train_rows, val_rows, settings, seed, dev, state_dir, progress)
    seconds = clock.seconds
    trainable = count_trainable(backbone.model.parameters())

    per_class = class_prompts(dataset.class_names, prompts["templates"], prompts.get("classnames"))
    frames = []
    for alpha in sorted(set(params.get("wise_alphas", [])) | {1.0}):
        backbone.model.load_state_dict(wise_ft(pretrained, kept, alpha))
        backbone.model.eval()
        head = zeroshot.build_head(zeroshot.state(prompt_ensemble(backbone, per_class, dev), backbone.logit_scale))
        features = encode_images(backbone, dataset.images, test_rows["index"].to_numpy(), conditions, dev, progress=progress)
        label = method if alpha == 1 else f"{method}+wise{alpha:g}"
        frames.append(evaluate_features(head, features, test_rows, {**run, "method": label}))
        if alpha == 1:
            # the tuned model's own class-prompt classifier: evaluated like a zero-shot head
            save_torch(zeroshot.state(head.class_text, head.logit_scale), head_out)
    save_torch(kept, weights_out)
    record = {"method": method, "seed": seed, "n_train": len(train_rows), "chosen": info, "params": settings}
    images_seen = len(train_rows) * params["epochs"]
    record.update(cost_record(dev, seconds, trainable, images_seen))
    write_json(record, record_out)
    write_csv(pd.concat(frames, ignore_index=True), metrics_out)
    if state_dir:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume
