"""The jobs that adapt a backbone and write runs: frozen-feature fits from cached features
(``train_frozen``), backbone training (``train_backbone``) and zero-shot (``zeroshot``).

Each reads what its method declares (:mod:`medtune.methods`), writes the run's labels into
every file it makes, and lists its runs in a manifest (:mod:`medtune.records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from medtune.conditions import augmented_condition
from medtune.data.store import DatasetError, read_samples
from medtune.evaluate import evaluate_features, evaluate_run, write_predictions
from medtune.heads import FitData, fit, load_head
from medtune.io import atomic_dir, save_torch, write_csv, write_json
from medtune.jobs import report
from medtune.methods import zeroshot
from medtune.records import PREDICTIONS, write_manifest
from medtune.training import Stopwatch, cost_record, resolve_device


# what evaluation and the frozen fits read of samples.csv (not the captions: most of its bytes)
EVAL_COLUMNS = ["index", "split", "label", "label_name", "group"]


def load_text(path) -> tuple[np.ndarray, float]:
    with np.load(path) as text:
        return text["classifier"], float(text["logit_scale"])


def zeroshot_run(run: dict, text, samples, test_dir, conditions, out_dir) -> None:
    """The pretrained model's class-prompt classifier under every test condition: ``out_dir/``
    ``{head.pt, metrics.csv, predictions.npz, runs.json}``."""
    classifier, scale = load_text(text)
    out_dir = Path(out_dir)
    save_torch({**zeroshot.state(classifier, scale), "run": run}, out_dir / "head.pt")
    table = read_samples(samples, columns=EVAL_COLUMNS)
    test_rows = table[table["split"] == "test"]
    write_csv(evaluate_run(out_dir / "head.pt", test_dir, test_rows, conditions, run), out_dir / "metrics.csv")
    clean = {"clean": np.load(Path(test_dir) / "clean.npy", mmap_mode="r")}
    write_predictions(load_head(out_dir / "head.pt"), clean, test_rows, out_dir / PREDICTIONS)
    write_manifest([{**run, "files": {"head": "head.pt", "metrics": "metrics.csv", "predictions": PREDICTIONS}}], out_dir)


def split_features(features_dir, samples: pd.DataFrame, split: str, condition: str = "clean") -> tuple[np.ndarray, pd.DataFrame]:
    """Features of a split under a condition, and its rows (features are stored in samples.csv row order)."""
    rows = samples[samples["split"] == split].reset_index(drop=True)
    features = np.load(Path(features_dir) / f"{condition}.npy", mmap_mode="r")
    if len(features) != len(rows):
        raise DatasetError(f"{features_dir}/{condition}.npy has {len(features)} rows, split {split!r} has {len(rows)}")
    return features, rows


def subset_positions(rows: pd.DataFrame, subset_path) -> np.ndarray:
    subset = pd.read_csv(subset_path)
    position = pd.Series(np.arange(len(rows)), index=rows["index"].to_numpy())
    missing = subset.loc[~subset["index"].isin(position.index), "index"]
    if len(missing):
        raise DatasetError(f"{subset_path}: sample {int(missing.iloc[0])} is not in the train split")
    return position.loc[subset["index"]].to_numpy()


def train_frozen(
    method: dict[str, Any],
    runs: list[dict[str, Any]],
    subsets: Mapping[str, Any],
    out_dir,
    train_dir,
    val_dir,
    text,
    samples,
    test_dir,
    conditions=("clean",),
    backbone: dict | None = None,
    prompts: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> None:
    """Fit a frozen-backbone method on cached features for every training subset (fraction or
    shot count) of one seed, and evaluate each fit on the test conditions.

    ``method`` is the configured method (``config["methods"][name]``); ``runs`` the labels of
    the runs to make, one per subset, and ``subsets`` maps each run's subset name (``frac5``,
    ``shots16``: :attr:`medtune.plan.Run.subset`) to its subset CSV, in the order of ``runs``.
    Writes ``out_dir/{subset}/{head.pt,train.json,metrics.csv,predictions.npz}`` and ``out_dir/runs.json``, the
    whole folder at once. One job covers all subsets because
    a fit from cached features takes about a second, less than starting Python and importing
    torch and scikit-learn. A method that needs the text encoder gets the frozen backbone
    (``backbone``: name, spec, weights); the others need features alone.
    """
    params, seed = method["params"], runs[0]["seed"]
    table = read_samples(samples, columns=EVAL_COLUMNS)
    train_features, train_rows = split_features(train_dir, table, "train")
    val_features, val_rows = split_features(val_dir, table, "val")
    augmented = None
    condition = augmented_condition(method["train_conditions"])
    if condition is not None:
        augmented, _ = split_features(train_dir, table, "train", condition)
    val_x, val_y = np.array(val_features), val_rows["label"].to_numpy()
    classifier, scale = load_text(text)
    test_rows = table[table["split"] == "test"]
    test_features = {c: np.load(Path(test_dir) / f"{c}.npy", mmap_mode="r") for c in conditions}
    dev = resolve_device(device if method["needs_text_encoder"] else "cpu")
    text_encoder = {}
    if method["needs_text_encoder"]:
        text_encoder = {"backbone": _frozen_backbone(backbone, dev), "class_names": _class_words(table, prompts)}

    def fit_data(picked: np.ndarray) -> FitData:
        # indexing by positions copies out of the memory map
        train_x, train_y = train_features[picked], train_rows["label"].to_numpy()[picked]
        if augmented is not None:
            # each training image twice: clean, and under its own corruption
            train_x, train_y = np.concatenate([train_x, augmented[picked]]), np.concatenate([train_y, train_y])
        return FitData(train_features=train_x, train_labels=train_y, val_features=val_x, val_labels=val_y,
                       class_text=classifier, logit_scale=scale, **text_encoder)

    positions = {folder: subset_positions(train_rows, subset) for folder, subset in subsets.items()}
    # A job's first fit pays its one-off costs (the method's imports, torch's first kernels and
    # allocations): an untimed fit of the smallest subset first (the fewest images, fraction or
    # shots), so that every train.json's wall time is the method's own cost at its subset.
    fit(method["module"], fit_data(min(positions.values(), key=len)), params, seed)
    manifest = []
    with atomic_dir(out_dir) as tmp:
        bar = tqdm(positions.items(), desc=f"{runs[0]['method']} seed {seed}", disable=not progress)
        for done, ((folder, picked), run) in enumerate(zip(bar, runs), start=1):
            clock = Stopwatch()
            state, info = fit(method["module"], fit_data(picked), params, seed)
            seconds = clock.seconds
            # what the method says it trained, else every tensor of its head but the class text
            # (kNN and Tip-Adapter keep training features they never train)
            trainable = info.get("trainable_parameters")
            if trainable is None:
                trainable = sum(v.numel() for k, v in _tensors(state) if k != "class_text")
            save_torch({**state, "run": run}, tmp / folder / "head.pt")
            record = {**run, "n_train": int(len(picked)), "chosen": info, "params": params}
            record.update(cost_record(dev, seconds, trainable, len(picked) * params.get("epochs", 1)))
            write_json(record, tmp / folder / "train.json")
            # evaluate what was saved, on the test features loaded once for all subsets
            head = load_head(tmp / folder / "head.pt")
            write_csv(evaluate_features(head, test_features, test_rows, run), tmp / folder / "metrics.csv")
            write_predictions(head, test_features, test_rows, tmp / folder / PREDICTIONS)
            files = {"head": "head.pt", "record": "train.json", "metrics": "metrics.csv", "predictions": PREDICTIONS}
            manifest.append({**run, "files": {k: f"{folder}/{v}" for k, v in files.items()}})
            report(f"subset {folder} fitted and evaluated ({done}/{len(subsets)})")
        write_manifest(manifest, tmp)


def _frozen_backbone(backbone: dict, device):
    from medtune.models import load_backbone

    return load_backbone(backbone["name"], backbone["spec"], weights=backbone.get("weights"), device=str(device))


def _class_words(table: pd.DataFrame, prompts: dict | None) -> list[str]:
    """The words each class's prompts are built from, in label order."""
    names = table[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"]
    return [(prompts or {}).get("classnames", {}).get(n, n) for n in names]


def _tensors(state: dict, prefix: str = ""):
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from _tensors(value, prefix + key + ".")


def train_backbone(
    method: dict[str, Any],
    run: dict[str, Any],
    backbone_spec: dict,
    backbone_weights,
    dataset_dir,
    subset,
    prompts: dict,
    conditions,
    out_dir,
    state_dir=None,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Train inside the backbone for one run, then evaluate each model the method yields
    (for fine-tuning: the kept model and its WiSE-FT mixes; for CLIP-LoRA: the merged model). Writes ``out_dir/``
    ``{weights.pt, head.pt, train.json, metrics.csv, predictions.npz, runs.json}`` (the
    predictions are the kept model's, not the mixes').

    Training changes the image encoder, so unlike the frozen methods this job re-encodes
    the test split (every condition) with its own encoder.
    """
    from medtune.data.store import load_dataset
    from medtune.encode import class_prompts, encode_batch_size, encode_images, prompt_ensemble
    from medtune.methods import load
    from medtune.models import load_backbone
    from medtune.training import count_trainable, seed_everything

    module, params, seed = load(method), method["params"], run["seed"]
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    seed_everything(seed)
    dataset = load_dataset(dataset_dir)
    train_rows = dataset.split("train")
    train_rows = train_rows.iloc[subset_positions(train_rows.reset_index(drop=True), subset)]
    val_rows, test_rows = dataset.split("val"), dataset.split("test")
    backbone = load_backbone(run["backbone"], backbone_spec, weights=backbone_weights, device=str(dev))
    clock = Stopwatch()
    pretrained, kept, info = module.tune(backbone, dataset.images, train_rows, val_rows, params, prompts, seed, dev, state_dir, progress)
    seconds = clock.seconds
    # what the method says it trained and saw (LoRA's matrices are merged away by now), else
    # the parameters left trainable and every training image once per epoch
    trainable = info.get("trainable_parameters")
    if trainable is None:
        trainable = count_trainable(backbone.model.parameters())
    images_seen = info.get("images_seen")
    if images_seen is None:
        images_seen = len(train_rows) * params["epochs"]

    per_class = class_prompts(dataset.class_names, prompts["templates"], prompts.get("classnames"))
    frames = []
    for suffix, weights in module.mixes(pretrained, kept, params):
        backbone.model.load_state_dict(weights)
        backbone.model.eval()
        head = zeroshot.build_head(zeroshot.state(prompt_ensemble(backbone, per_class, dev), backbone.logit_scale))
        features = encode_images(backbone, dataset.images, test_rows["index"].to_numpy(), conditions, dev,
                                 encode_batch_size(backbone_spec), progress, f"the test split ({run['method'] + suffix})")
        frames.append(evaluate_features(head, features, test_rows, {**run, "method": run["method"] + suffix}))
        if not suffix:
            # the tuned model's own class-prompt classifier: evaluated like a zero-shot head
            save_torch({**zeroshot.state(head.class_text, head.logit_scale), "run": run}, out_dir / "head.pt")
            write_predictions(head, features, test_rows, out_dir / PREDICTIONS)
    save_torch(kept, out_dir / "weights.pt")
    record = {**run, "n_train": len(train_rows), "chosen": info, "params": params}
    record.update(cost_record(dev, seconds, trainable, images_seen))
    write_json(record, out_dir / "train.json")
    write_csv(pd.concat(frames, ignore_index=True), out_dir / "metrics.csv")
    files = {"weights": "weights.pt", "head": "head.pt", "record": "train.json", "metrics": "metrics.csv", "predictions": PREDICTIONS}
    write_manifest([{**run, "files": files}], out_dir)
    if state_dir:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume
