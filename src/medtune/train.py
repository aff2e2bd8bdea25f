"""Training entry points of the workflow: load cached features, fit a method, save its head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtune.data.store import DatasetError, read_samples
from medtune.evaluate import evaluate_run
from medtune.io import save_torch, write_csv, write_json
from medtune.methods import FitData, fit
from medtune.methods import zeroshot
from medtune.training import Stopwatch, cost_record, resolve_device


def load_text(path) -> tuple[np.ndarray, float]:
    with np.load(path) as text:
        return text["classifier"], float(text["logit_scale"])


def zeroshot_head(text_path, head_out) -> None:
    classifier, scale = load_text(text_path)
    save_torch(zeroshot.state(classifier, scale), head_out)


def split_features(features_dir, samples: pd.DataFrame, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Clean features of a split and its rows (features are stored in samples.csv row order)."""
    rows = samples[samples["split"] == split].reset_index(drop=True)
    features = np.load(Path(features_dir) / "clean.npy", mmap_mode="r")
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
    train_dir,
    val_dir,
    text,
    subset,
    samples,
    head_out,
    record_out,
    test_dir=None,
    conditions=("clean",),
    metrics_out=None,
    run=None,
) -> None:
    table = read_samples(samples)
    train_features, train_rows = split_features(train_dir, table, "train")
    val_features, val_rows = split_features(val_dir, table, "val")
    picked = subset_positions(train_rows, subset)
    classifier, scale = load_text(text)
    data = FitData(
        train_features=np.asarray(train_features[picked]),
        train_labels=train_rows["label"].to_numpy()[picked],
        val_features=np.asarray(val_features),
        val_labels=val_rows["label"].to_numpy(),
        class_text=classifier,
        logit_scale=scale,
    )
    clock = Stopwatch()
    state, info = fit(method, data, params, seed)
    seconds = clock.seconds
    trainable = sum(v.numel() for k, v in _tensors(state) if k != "class_text")
    save_torch(state, head_out)
    record = {"method": method, "seed": seed, "n_train": int(len(picked)), "chosen": info, "params": params}
    record.update(cost_record(resolve_device("cpu"), seconds, trainable, len(picked) * params.get("epochs", 1)))
    write_json(record, record_out)
    if metrics_out is not None:
        test_rows = table[table["split"] == "test"]
        write_csv(evaluate_run(head_out, test_dir, test_rows, conditions, run or {}), metrics_out)


def _tensors(state: dict, prefix: str = ""):
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from _tensors(value, prefix + key + ".")
