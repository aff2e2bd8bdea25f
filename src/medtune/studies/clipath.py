"""CLIPath (seed 000): frozen CLIP adapted with few labelled images.

Accuracy, recall, precision, F1 and AUC by share of training data, the training cost
beside accuracy, and (beyond the seed) adapted models under corruptions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.figures import PALETTE, confusion, label, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import add_paper, fill_unused_labels, format_cell, format_seconds, method_order, select, summarise, usage

SPEC = {
    "label": "CLIPath",
    "conditions": ["clean"],
    "tables": {
        "clipath_accuracy": {"function": "accuracy_table", "title": "CLIPath: test metrics by share of training data"},
        "clipath_cost": {"function": "cost_table", "title": "CLIPath: accuracy and training cost"},
        "adapted_robustness": {
            "function": "robustness_table",
            "title": "Beyond the seeds: test accuracy of adapted models under corruptions",
            "when": "corrupted",
        },
    },
    "figures": {
        "clipath_accuracy": {
            "function": "accuracy_figure",
            "inputs": ["metrics"],
            "caption": "Test accuracy against the share of training data used (log scale), per method, on the clean "
            "test split: mean over seeds with a 95 % t-interval band. Zero-shot needs no training data and is drawn "
            "as a horizontal line.",
        },
        "clipath_training_time": {
            "function": "training_time_figure",
            "inputs": ["costs"],
            "caption": "Wall time of one training run against the share of training data (log–log), per method: mean "
            "over seeds with a 95 % t-interval band, measured by each run and recorded in its ``train.json``. "
            "Frozen-backbone methods train from cached features, so their cost follows the images they see.",
        },
        "clipath_confusion": {
            "function": "confusion_figure",
            "inputs": ["metrics", "runs", "test_features", "samples"],
            "caption": "Per-class confusion matrix (rows normalised) of the most accurate frozen-backbone run of the "
            "CLIPath study on the clean test split.",
        },
    },
}
CLIPATH_METRICS = ["accuracy", "recall", "precision", "f1", "auc"]
MARKERS = ["o", "s", "^", "D"]


def method_styles(names) -> list[tuple[str, str]]:
    """``(colour, marker)`` per method: the palette's colours, then again with another marker,
    so a study with more methods than colours still draws every one distinguishably."""
    n = len(PALETTE)
    return [(PALETTE[i % n], MARKERS[(i // n) % len(MARKERS)]) for i in range(len(names))]


def fraction_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs on a share of the training data (and zero-shot's): the figures drawn
    against the fraction leave the shot runs out."""
    return frame[frame["shots"].isna()] if "shots" in frame else frame


def accuracy_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Rows: dataset, backbone, method, data usage (a share of the training data, or k images
    per class); columns: accuracy, recall, precision, F1, AUC."""
    m = select(metrics, study)
    m = m[m["metric"].isin(CLIPATH_METRICS)]
    s = summarise(m, ["dataset", "backbone", "method", "fraction", "shots", "metric"])
    numbers = s.pivot_table(index=["dataset", "backbone", "method", "fraction", "shots"], columns="metric", values=["mean", "ci95"])
    numbers.columns = [f"{metric}_{stat}" for stat, metric in numbers.columns]
    # pivoting drops a column that is all NaN (the interval of a single seed, AUC of a
    # one-class test split): keep both columns of every metric, blank where undefined
    present = [metric for metric in CLIPATH_METRICS if metric in set(m["metric"])]
    numbers = numbers.reindex(columns=[f"{m}_{stat}" for m in present for stat in ("mean", "ci95")])
    numbers = method_order(numbers.reset_index(), methods)
    pretty = numbers[["dataset", "backbone", "method"]].copy()
    pretty["data usage"] = [usage(f, k) for f, k in zip(numbers["fraction"], numbers["shots"])]
    for metric in CLIPATH_METRICS:
        if f"{metric}_mean" in numbers:
            pretty[metric] = [format_cell(a, b, metric) for a, b in zip(numbers[f"{metric}_mean"], numbers[f"{metric}_ci95"])]
    best = {m: f"{m}_mean" for m in CLIPATH_METRICS}
    numbers, pretty = add_paper(numbers, pretty, study.get("paper", {}).get("clipath_accuracy"), ["dataset", "method", "fraction"], best)
    return numbers, pretty, best


def cost_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """CLIPath's complexity table: accuracy beside training time, per method and data usage."""
    keys = ["dataset", "backbone", "method", "fraction", "shots"]
    acc = summarise(select(metrics, study).query("metric == 'accuracy'"), keys)
    acc = acc.rename(columns={"mean": "accuracy_mean", "ci95": "accuracy_ci95", "n": "n_seeds"})
    c = costs[costs["dataset"].isin(study["datasets"]) & costs["backbone"].isin(study["backbones"])] if len(costs) else costs
    if len(c):
        c = fill_unused_labels(c)
        time = summarise(c, keys, "wall_seconds").rename(columns={"mean": "train_seconds_mean", "ci95": "train_seconds_ci95"}).drop(columns="n")
        extra = c.groupby(keys, as_index=False)[["trainable_parameters", "images_seen", "peak_memory_mb", "n_train"]].mean()
        acc = acc.merge(time, on=keys, how="left").merge(extra, on=keys, how="left")
    numbers = method_order(acc, methods)
    pretty = numbers[["dataset", "backbone", "method"]].copy()
    pretty["data usage"] = [usage(f, k) for f, k in zip(numbers["fraction"], numbers["shots"])]
    pretty["accuracy"] = [format_cell(a, b, "accuracy") for a, b in zip(numbers["accuracy_mean"], numbers["accuracy_ci95"])]
    if "train_seconds_mean" in numbers:
        pretty["training time"] = numbers["train_seconds_mean"].map(format_seconds)
        pretty["trainable parameters"] = numbers["trainable_parameters"].map(lambda v: "–" if pd.isna(v) else f"{int(v):,}")
    best = {"accuracy": "accuracy_mean"}
    numbers, pretty = add_paper(numbers, pretty, study.get("paper", {}).get("clipath_cost"), ["dataset", "method", "fraction"], best)
    return numbers, pretty, best


def robustness_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Beyond the seeds: does adaptation buy or cost robustness? Accuracy of every method
    (at each training fraction or shot count) under every condition of the CLIPath study."""
    m = select(metrics, study, conditions=study["conditions"]).query("metric == 'accuracy'")
    s = summarise(m, ["dataset", "backbone", "method", "fraction", "shots", "condition"])
    s["model"] = [
        f"{meth}@{k}-shot" if k > 0 else f"{meth}" if f == 0 else f"{meth}@{f:g}%"
        for meth, f, k in zip(s["method"], s["fraction"], s["shots"])
    ]
    numbers = s.pivot_table(index=["dataset", "backbone", "model"], columns="condition", values="mean", sort=False)
    numbers = numbers[[c for c in study["conditions"] if c in numbers.columns]].reset_index()
    pretty = numbers.copy()
    for col in numbers.columns[3:]:
        pretty[col] = numbers[col].map(lambda v: format_cell(v, float("nan"), "accuracy"))
    return numbers, pretty, None


def accuracy_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Accuracy vs. share of training data (log x), mean and 95 % CI band over seeds; one panel per dataset."""
    metrics = fraction_rows(pd.read_csv(inputs["metrics"]))
    m = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["condition"] == "clean")
        & (metrics["group"] == "all")
        & metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"][:1])
    ]
    datasets = study["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = m[m["dataset"] == dataset]
        for (colour, marker), method in zip(method_styles(study["methods"]), study["methods"]):
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            if rows["fraction"].isna().all():
                ax.axhline(100 * rows["value"].mean(), color=colour, ls="--", label=label(methods, method))
                continue
            s = summarise(rows, ["fraction"]).sort_values("fraction")
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s["fraction"], 100 * s["mean"], marker=marker, color=colour, label=label(methods, method))
            ax.fill_between(s["fraction"], 100 * (s["mean"] - ci), 100 * (s["mean"] + ci), color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    save(fig, path)


def training_time_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Training wall time against the share of training data (log-log), per method, mean and CI over seeds."""
    costs = fraction_rows(pd.read_csv(inputs["costs"]))
    c = costs[costs["dataset"].isin(study["datasets"]) & costs["backbone"].isin(study["backbones"][:1]) & costs["method"].isin(study["methods"])]
    datasets = study["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = c[c["dataset"] == dataset]
        for (colour, marker), method in zip(method_styles(study["methods"]), study["methods"]):  # the accuracy figure's
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            s = summarise(rows, ["fraction"], "wall_seconds").sort_values("fraction")
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s["fraction"], s["mean"], marker=marker, color=colour, label=label(methods, method))
            ax.fill_between(s["fraction"], np.maximum(s["mean"] - ci, 1e-3), s["mean"] + ci, color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("training time (s)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8)
    save(fig, path)


def confusion_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Confusion matrix of the most accurate zero-shot or frozen-feature run (clean test split)."""
    from pathlib import Path

    from medtune.data.store import read_samples
    from medtune.heads import load_head, predict
    from medtune.records import read_runs

    runs = read_runs(inputs["runs"])
    def key(method, seed, fraction, shots=None):
        number = lambda v, kind: None if v is None or pd.isna(v) else kind(v)
        return method, number(seed, int), number(fraction, float), number(shots, int)

    by_key = {key(r["method"], r["seed"], r["fraction"], r.get("shots")): r for r in runs}
    metrics = pd.read_csv(inputs["metrics"])
    if "shots" not in metrics:
        metrics["shots"] = float("nan")
    m = metrics[
        (metrics["condition"] == "clean") & (metrics["group"] == "all") & (metrics["metric"] == "accuracy")
        & metrics["dataset"].isin({r["dataset"] for r in runs}) & metrics["backbone"].isin({r["backbone"] for r in runs})
    ]
    m = m[[key(*row) in by_key for row in zip(m["method"], m["seed"], m["fraction"], m["shots"])]]
    best = m.sort_values(["value", "method", "fraction", "shots", "seed"], ascending=[False, True, True, True, True]).iloc[0]
    run = by_key[key(best["method"], best["seed"], best["fraction"], best["shots"])]
    test = read_samples(inputs["samples"]).query("split == 'test'")
    names = test[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"].tolist()
    logits = predict(load_head(run["files"]["head"]), np.load(Path(inputs["test_features"]) / "clean.npy"))
    if run["seed"] is None:
        setting = "pretrained"
    elif run.get("shots") is not None:
        setting = f"seed {run['seed']}, {run['shots']} images per class"
    else:
        setting = f"seed {run['seed']}, {run['fraction']:g} % of train"
    title = f"{label(methods, run['method'])}, {setting}: accuracy {100 * best['value']:.1f} %"
    confusion(test["label"].to_numpy(), logits, names, title, path)
