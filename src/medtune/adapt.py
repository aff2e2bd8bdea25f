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
from medtune.evaluate import LOGITS, evaluate_features, evaluate_run, write_logits, write_predictions
from medtune.heads import FitData, build_head, fit, load_head, predict, refine
from medtune.io import atomic_dir, save_torch, write_csv, write_json
from medtune.jobs import report
from medtune.methods import zeroshot
from medtune.protocol import ids_digest
from medtune.records import PREDICTIONS, read_runs, write_manifest
from medtune.training import Stopwatch, cost_record, resolve_device


# what evaluation and the frozen fits read of samples.csv (not the captions: most of its bytes),
# and each image's site where the dataset has one (for the logits the centre-shift tables read)
EVAL_COLUMNS = ["index", "split", "label", "label_name", "group"]


def eval_table(samples) -> pd.DataFrame:
    table = read_samples(samples, columns=lambda c: c in (*EVAL_COLUMNS, "site"))
    missing = [c for c in EVAL_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"{samples}: no column(s) {missing}")
    return table


def load_text(path) -> tuple[np.ndarray, float]:
    with np.load(path) as text:
        return text["classifier"], float(text["logit_scale"])


def zeroshot_run(run: dict, text, samples, test_dir, conditions, out_dir, val_dir=None) -> None:
    """The pretrained model under every test condition: its class-prompt classifier and its own
    embedding's retrieval and invariance: ``out_dir/{head.pt, metrics.csv, predictions.npz, runs.json}``,
    and ``logits.npz`` when ``val_dir`` is given. Without ``text`` (a backbone with no text tower)
    there is no classifier: the metrics are the embedding's alone and there are no predictions
    or logits."""
    classifier, scale = load_text(text) if text is not None else (None, None)
    out_dir = Path(out_dir)
    save_torch({**zeroshot.state(classifier, scale), "run": run}, out_dir / "head.pt")
    table = eval_table(samples)
    test_rows = table[table["split"] == "test"]
    write_csv(evaluate_run(out_dir / "head.pt", test_dir, test_rows, conditions, run), out_dir / "metrics.csv")
    files = {"head": "head.pt", "metrics": "metrics.csv"}
    if classifier is None:
        report(f"backbone {run['backbone']} has no text tower: no zero-shot classification, its embedding's retrieval and invariance only")
    else:
        clean = {"clean": np.load(Path(test_dir) / "clean.npy", mmap_mode="r")}
        head = load_head(out_dir / "head.pt")
        write_predictions(head, clean, test_rows, out_dir / PREDICTIONS)
        files["predictions"] = PREDICTIONS
        if val_dir is not None:
            val_features, val_rows = split_features(val_dir, table, "val")
            test_features = {c: np.load(Path(test_dir) / f"{c}.npy", mmap_mode="r") for c in conditions}
            write_logits(head, val_features, val_rows, test_features, test_rows, _train_sites(table), out_dir / LOGITS)
            files["logits"] = LOGITS
    write_manifest([{**run, "files": files}], out_dir)


def _train_sites(table: pd.DataFrame) -> list[str]:
    return table.loc[table["split"] == "train", "site"].tolist() if "site" in table.columns else []


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
    logit_subsets=(),
    base_outputs=None,
) -> None:
    """Fit a frozen-backbone method on cached features for every training subset (fraction or
    shot count) of one seed, and evaluate each fit on the test conditions; the subsets named in
    ``logit_subsets`` also keep their val and test logits (``logits.npz``).

    With ``base_outputs`` (the job outputs of another method's runs) the method is a
    transductive stage on top of them (:func:`medtune.heads.refine`): each run refines the base
    run of the same seed and subset, and gets that run's training images as its support. A base
    without training data (zero-shot) has one run, no seed and no subset (``subsets`` is
    ``{"": None}``): its files go straight into ``out_dir``.

    ``method`` is the configured method (``config["methods"][name]``); ``runs`` the labels of
    the runs to make, one per subset, and ``subsets`` maps each run's subset name (``frac5``,
    ``shots16``: :attr:`medtune.plan.Run.subset`) to its subset CSV, in the order of ``runs``.
    Writes ``out_dir/{subset}/{head.pt,train.json,metrics.csv,predictions.npz}`` and ``out_dir/runs.json``, the
    whole folder at once. One job covers all subsets because
    a fit from cached features takes about a second, less than starting Python and importing
    torch and scikit-learn. ``text`` (the class-prompt features) is given for the methods that
    require a text tower, None for the others. A method that needs the text encoder gets the frozen
    backbone (``backbone``: name, spec, weights); the others need features alone.
    """
    params, seed = method["params"], runs[0]["seed"]
    table = eval_table(samples)
    train_features, train_rows = split_features(train_dir, table, "train")
    val_features, val_rows = split_features(val_dir, table, "val")
    augmented = None
    condition = augmented_condition(method["train_conditions"])
    if condition is not None:
        augmented, _ = split_features(train_dir, table, "train", condition)
    val_x, val_y = np.array(val_features), val_rows["label"].to_numpy()
    # class text for the methods that require a text tower; the others get the class count alone
    classifier, scale = load_text(text) if text is not None else (None, None)
    n_classes = int(table["label"].nunique())
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
                       class_text=classifier, logit_scale=scale, n_classes=n_classes, **text_encoder)

    positions = {
        folder: subset_positions(train_rows, subset) if subset is not None else np.zeros(0, dtype=np.int64)
        for folder, subset in subsets.items()
    }
    base_heads = _base_heads(base_outputs, runs) if base_outputs is not None else None

    def fit_run(picked: np.ndarray, run: dict) -> tuple[dict, dict]:
        if base_heads is None:
            return fit(method["module"], fit_data(picked), params, seed)
        import torch

        base = torch.load(base_heads[_usage_key(run)], map_location="cpu", weights_only=True)
        base.pop("run", None)
        state, info = refine(method["module"], base, fit_data(picked), params, seed or 0)
        # a transductive stage works when it predicts: its cost is one pass over the clean test split
        head = build_head(state)
        predict(head, test_features["clean"])
        return state, {**info, **getattr(head, "last", {})}

    # A job's first fit pays its one-off costs (the method's imports, torch's first kernels and
    # allocations): an untimed fit of the smallest subset first (the fewest images, fraction or
    # shots), so that every train.json's wall time is the method's own cost at its subset.
    smallest = min(positions, key=lambda folder: len(positions[folder]))
    fit_run(positions[smallest], runs[list(positions).index(smallest)])
    manifest = []
    with atomic_dir(out_dir) as tmp:
        bar = tqdm(positions.items(), desc=f"{runs[0]['method']} seed {seed}", disable=not progress)
        for done, ((folder, picked), run) in enumerate(zip(bar, runs), start=1):
            clock = Stopwatch()
            state, info = fit_run(picked, run)
            seconds = clock.seconds
            # what the method says it trained, else every tensor of its head but the class text
            # (kNN and Tip-Adapter keep training features they never train)
            trainable = info.get("trainable_parameters")
            if trainable is None:
                trainable = sum(v.numel() for k, v in _tensors(state) if k != "class_text")
            save_torch({**state, "run": run}, tmp / folder / "head.pt")
            record = {**run, "n_train": int(len(picked)), "subset_sha256": ids_digest(train_rows["index"].to_numpy()[picked]),
                      "chosen": info, "params": params}
            record.update(cost_record(dev, seconds, trainable, len(picked) * params.get("epochs", 1)))
            write_json(record, tmp / folder / "train.json")
            # evaluate what was saved, on the test features loaded once for all subsets
            head = load_head(tmp / folder / "head.pt")
            write_csv(evaluate_features(head, test_features, test_rows, run), tmp / folder / "metrics.csv")
            write_predictions(head, test_features, test_rows, tmp / folder / PREDICTIONS)
            files = {"head": "head.pt", "record": "train.json", "metrics": "metrics.csv", "predictions": PREDICTIONS}
            if folder in logit_subsets:
                write_logits(head, val_x, val_rows, test_features, test_rows, _train_sites(table), tmp / folder / LOGITS)
                files["logits"] = LOGITS
            manifest.append({**run, "files": {k: str(Path(folder) / v) for k, v in files.items()}})
            report(f"subset {folder} fitted and evaluated ({done}/{len(subsets)})")
        write_manifest(manifest, tmp)


def _usage_key(run: dict) -> tuple:
    """A run's seed and training subset, whatever its method: how a stage finds its base's run."""
    number = lambda v, kind: None if v is None else kind(v)  # noqa: E731
    return number(run.get("seed"), int), number(run.get("fraction"), float), number(run.get("shots"), int)


def _base_heads(base_outputs, runs: list[dict]) -> dict[tuple, str]:
    """The head file of each base run a stage's ``runs`` refine, by seed and subset."""
    heads = {_usage_key(r): r["files"]["head"] for r in read_runs(base_outputs)}
    missing = [_usage_key(r) for r in runs if _usage_key(r) not in heads]
    if missing:
        raise DatasetError(f"{runs[0]['method']}: no base run of seed {missing[0][0]} and subset {missing[0][1:]} in {list(base_outputs)}")
    return heads


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


def load_tuned(module, backbone, weights: dict, per_class: list[list[str]], device) -> dict[str, Any]:
    """Load a backbone-trained run's ``weights`` into ``backbone.model`` (eval mode) and return the
    head state its test features are scored with: the method's own where its weights carry one
    (``split_head``: LP-FT's linear head), else the tuned model's own class-prompt classifier,
    evaluated like a zero-shot head."""
    from medtune.encode import prompt_ensemble

    head_state = None
    if hasattr(module, "split_head"):
        weights, head_state = module.split_head(weights)
    backbone.model.load_state_dict(weights)
    backbone.model.eval()
    if head_state is None:
        head_state = zeroshot.state(prompt_ensemble(backbone, per_class, device), backbone.logit_scale)
    return head_state


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
    from medtune import memory
    from medtune.data.store import load_dataset
    from medtune.encode import class_prompts, encode_batch_size, encode_images
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
    # each optimiser step holds one micro-batch's activations (grad_accum splits the batch)
    memory.announce(backbone, -(-params.get("batch_size", 1) // params.get("grad_accum", 1)), dev, training=True)
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
        head_state = load_tuned(module, backbone, weights, per_class, dev)
        head = build_head(head_state)
        features = encode_images(backbone, dataset.images, test_rows["index"].to_numpy(), conditions, dev,
                                 encode_batch_size(backbone_spec), progress, f"the test split ({run['method'] + suffix})")
        frames.append(evaluate_features(head, features, test_rows, {**run, "method": run["method"] + suffix}))
        if not suffix:
            save_torch({**head_state, "run": run}, out_dir / "head.pt")
            write_predictions(head, features, test_rows, out_dir / PREDICTIONS)
    save_torch(kept, out_dir / "weights.pt")
    record = {**run, "n_train": len(train_rows), "subset_sha256": ids_digest(train_rows["index"].to_numpy()), "chosen": info, "params": params}
    record.update(cost_record(dev, seconds, trainable, images_seen))
    write_json(record, out_dir / "train.json")
    write_csv(pd.concat(frames, ignore_index=True), out_dir / "metrics.csv")
    files = {"weights": "weights.pt", "head": "head.pt", "record": "train.json", "metrics": "metrics.csv", "predictions": PREDICTIONS}
    write_manifest([{**run, "files": files}], out_dir)
    if state_dir:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume


def make_soup(
    method: dict[str, Any],
    run: dict[str, Any],
    ingredients,
    ingredient_module: str,
    backbone_spec: dict,
    backbone_weights,
    dataset_dir,
    prompts: dict,
    conditions,
    out_dir,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """A model soup of the runs listed in ``ingredients`` (their job outputs: runs of one
    backbone-training method's variants on this run's seed and subset), evaluated as
    :func:`train_backbone` evaluates a run. Writes ``out_dir/{weights.pt, head.pt, train.json,
    metrics.csv, predictions.npz, runs.json}``."""
    import torch

    from medtune.data.store import load_dataset
    from medtune.encode import class_prompts, encode_batch_size, encode_images
    from medtune.io import read_json
    from medtune.methods import soup
    from medtune.models import load_backbone
    from medtune.registry import import_module

    params, out_dir, dev = method["params"], Path(out_dir), resolve_device(device)
    module = import_module(ingredient_module)
    dataset = load_dataset(dataset_dir)
    val_rows, test_rows = dataset.split("val"), dataset.split("test")
    backbone = load_backbone(run["backbone"], backbone_spec, weights=backbone_weights, device=str(dev))
    per_class = class_prompts(dataset.class_names, prompts["templates"], prompts.get("classnames"))
    batch_size = encode_batch_size(backbone_spec)
    found = read_runs(ingredients)
    clock = Stopwatch()

    def val_accuracy(weights) -> float:
        head = build_head(load_tuned(module, backbone, weights, per_class, dev))
        features = encode_images(backbone, dataset.images, val_rows["index"].to_numpy(), ["clean"], dev, batch_size, False)
        return float((predict(head, features["clean"]).argmax(1) == val_rows["label"].to_numpy()).mean())

    states = [torch.load(r["files"]["weights"], map_location="cpu", weights_only=True) for r in found]
    own = [val_accuracy(s) for s in states]
    if params["recipe"] == "uniform":
        kept, steps = list(range(len(states))), []
        weights = soup.average(states)
        accuracy = val_accuracy(weights)
    else:
        kept, accuracy, steps = soup.greedy(states, val_accuracy, own, params.get("join_if", "not_worse"))
        weights = soup.average([states[i] for i in kept])
    head_state = load_tuned(module, backbone, weights, per_class, dev)
    head = build_head(head_state)
    features = encode_images(backbone, dataset.images, test_rows["index"].to_numpy(), conditions, dev, batch_size, progress,
                             f"the test split ({run['method']})")
    seconds = clock.seconds
    records = [read_json(r["files"]["record"]) for r in found]
    names = [r["method"] for r in found]
    info = {
        "recipe": params["recipe"],
        "ingredients": names,
        "ingredient_val_accuracy": dict(zip(names, own)),
        "kept": [names[i] for i in kept],
        "val_accuracy": accuracy,
        "greedy_steps": [{**s, "ingredient": names[s["ingredient"]]} for s in steps],
        "soup_seconds": round(seconds, 3),
        "ingredient_seconds": round(sum(r["wall_seconds"] for r in records), 3),
    }
    save_torch(weights, out_dir / "weights.pt")
    save_torch({**head_state, "run": run}, out_dir / "head.pt")
    write_predictions(head, features, test_rows, out_dir / PREDICTIONS)
    # a soup costs its ingredients' training and its own making
    record = {**run, "n_train": records[0]["n_train"], "chosen": info, "params": params}
    record.update(cost_record(dev, seconds + sum(r["wall_seconds"] for r in records), max(r["trainable_parameters"] for r in records),
                              sum(r["images_seen"] for r in records)))
    write_json(record, out_dir / "train.json")
    write_csv(evaluate_features(head, features, test_rows, run), out_dir / "metrics.csv")
    files = {"weights": "weights.pt", "head": "head.pt", "record": "train.json", "metrics": "metrics.csv", "predictions": PREDICTIONS}
    write_manifest([{**run, "files": files}], out_dir)
