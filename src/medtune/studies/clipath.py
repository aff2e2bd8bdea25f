"""CLIPath (seed 000): frozen CLIP adapted with few labelled images.

Accuracy, recall, precision, F1 and AUC by share of training data, the training cost
beside accuracy, and (beyond the seed) adapted models under corruptions, paired
significance tests between methods (:mod:`medtune.significance`) and calibration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.conditions import SUITES
from medtune.figures import PALETTE, confusion, label, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.significance import ALPHA, compare, per_usage, winners
from medtune.tables import (add_not_run_rows, add_paper, fill_unused_labels, format_cell, format_seconds, method_order, not_run, of_study,
                            select, summarise, usage)

SPEC = {
    "label": "CLIPath",
    "conditions": ["clean"],
    "tables": {
        "clipath_accuracy": {"function": "accuracy_table", "inputs": ["runs"], "title": "CLIPath: test metrics by share of training data"},
        "clipath_cost": {"function": "cost_table", "title": "CLIPath: accuracy and training cost"},
        "adapted_robustness": {
            "function": "robustness_table",
            "title": "Beyond the seeds: test accuracy of adapted models under corruptions",
            "when": "corrupted",
        },
        "clipath_significance": {
            "function": "significance_table",
            "inputs": ["runs"],
            "title": "CLIPath: paired differences between methods on the clean test split",
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
        "clipath_shots": {
            "function": "shots_figure",
            "inputs": ["metrics"],
            "when": "shots",
            "caption": "Test accuracy against the number of training images per class (log scale), per method, on the "
            "clean test split: mean over seeds with a 95 % t-interval band. Methods without training data are drawn as "
            "horizontal lines.",
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
        "clipath_reliability": {
            "function": "reliability_figure",
            "inputs": ["metrics", "runs"],
            "caption": "Reliability diagrams of the most accurate run (on a share of the training data) of each method "
            "on the clean test split: accuracy of the images in each of 15 equal-width bins of top-class softmax "
            "confidence (bars) against the diagonal of perfect calibration; bar shading shows the bin's share of "
            "images. The title gives the expected calibration error over those bins (ECE, 15 bins).",
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


def accuracy_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict, runs=()):
    """Rows: dataset, backbone, method, data usage (a share of the training data, or k images
    per class); columns: accuracy, recall, precision, F1, AUC.
    The accuracy of a trained method carries † where it beats zero-shot and ‡ where it beats
    the best other trained method, significantly (:func:`medtune.significance.winners`)."""
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
    if "accuracy_mean" in numbers:
        numbers, pretty = _mark_winners(numbers, pretty, compare(metrics, study, list(runs), methods))
    best = {m: f"{m}_mean" for m in CLIPATH_METRICS}
    numbers, pretty = add_paper(numbers, pretty, study.get("paper", {}).get("clipath_accuracy"), ["dataset", "method", "fraction"], best)
    return numbers, pretty, best


SIGNIFICANCE_NOTES = {
    "†": "better than zero-shot",
    "‡": "better than the most accurate other trained method at that data usage",
}


def _mark_winners(numbers: pd.DataFrame, pretty: pd.DataFrame, comparisons: pd.DataFrame):
    """† and ‡ beside the accuracy of the runs that significantly beat the references, at
    their fraction or shot count."""
    keys = ["dataset", "backbone", "method", "fraction", "shots"]
    won = winners(comparisons, numbers[[*keys, "accuracy_mean"]])
    found = won.set_index(keys)
    rows = list(zip(*(numbers[k] for k in keys)))
    for column in ("beats_zeroshot", "beats_best_baseline"):
        numbers[column] = [bool(found[column].get(k, False)) for k in rows]
    marks = ["".join(m for m, hit in zip(SIGNIFICANCE_NOTES, flags) if hit)
             for flags in zip(numbers["beats_zeroshot"], numbers["beats_best_baseline"])]
    pretty["accuracy"] = [f"{cell} {mark}" if mark else cell for cell, mark in zip(pretty["accuracy"], marks)]
    pretty.attrs["notes"] = [
        "; ".join(f"{mark} {text}" for mark, text in SIGNIFICANCE_NOTES.items())
        + f": a positive paired difference in clean accuracy with p below {ALPHA:g} after Holm's correction in every test "
        "made (t-test over seeds, bootstrap over test images; see clipath_significance)."
    ]
    return numbers, pretty


def _p(value: float) -> str:
    if np.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _signed(mean: float, ci: float, scale: float, digits: int) -> str:
    if np.isnan(mean):
        return "–"
    text = f"{mean * scale:+.{digits}f}"
    return text if np.isnan(ci) else f"{text} ± {ci * scale:.{digits}f}"


def _interval(low: float, high: float, scale: float, digits: int) -> str:
    return "–" if np.isnan(low) else f"[{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def significance_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict, runs=()):
    """Every pair of methods (one of them trained) on the clean test split: per data usage,
    the mean paired difference over seeds (95 % t-interval, t-test), the paired bootstrap
    over test images for accuracy and AUC; per pair, the signed-rank test over all
    (seed, usage) pairs, a usage being a fraction or a shot count. Shown p-values are
    Holm-corrected within their column."""
    numbers = compare(metrics, study, list(runs), methods)
    per_pair = ~per_usage(numbers)
    pretty = numbers[["dataset", "backbone"]].copy()
    pretty["comparison"] = [f"{label(methods, m)} − {label(methods, r)}" for m, r in zip(numbers["method"], numbers["reference"])]
    pretty["data usage"] = [
        "all (seed, usage) pairs" if whole else usage(0 if pd.isna(f) else f, 0 if pd.isna(k) else k)
        for whole, f, k in zip(per_pair, numbers["fraction"], numbers["shots"])
    ]
    pretty["seeds"] = [f"{int(p)} pairs" if whole else f"{int(n)}" for whole, n, p in zip(per_pair, numbers["n_seeds"], numbers["n_pairs"])]
    pretty["Δ accuracy"] = [_signed(m, c, 100, 1) for m, c in zip(numbers["accuracy_diff"], numbers["accuracy_diff_ci95"])]
    pretty["p (t)"] = numbers["p_t_holm"].map(_p)
    pretty["Δ accuracy, bootstrap CI"] = [_interval(lo, hi, 100, 1) for lo, hi in zip(numbers["boot_accuracy_low"], numbers["boot_accuracy_high"])]
    pretty["p (bootstrap)"] = numbers["p_boot_accuracy_holm"].map(_p)
    pretty["Δ AUC"] = [_signed(m, c, 1, 3) for m, c in zip(numbers["auc_diff"], numbers["auc_diff_ci95"])]
    pretty["Δ AUC, bootstrap CI"] = [_interval(lo, hi, 1, 3) for lo, hi in zip(numbers["boot_auc_low"], numbers["boot_auc_high"])]
    pretty["p AUC (bootstrap)"] = numbers["p_boot_auc_holm"].map(_p)
    pretty["p (signed-rank)"] = numbers["p_wilcoxon_holm"].map(_p)
    pretty.attrs["notes"] = [
        "Differences are the first method minus the second on the clean test split (accuracy in points, AUC in units), "
        "paired on seed and training subset. Δ: mean over seeds ± half-width of the 95 % t-interval; p (t): paired t-test "
        "over seeds. Bootstrap: 1,000 resamples of the test images, the same for both methods and every seed, the "
        "difference averaged over seeds; 95 % percentile interval (CI), p from the bootstrap standard error. p (signed-rank): Wilcoxon "
        "over every (seed, data usage) pair of the two methods. Every p-value is Holm-corrected within its column."
    ]
    return numbers, pretty, None


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
    (at each training fraction or shot count) under every condition of the CLIPath study, what
    it trained on (clean, or clean plus a suite's corruptions), and its mean over each suite's
    conditions: a variant trained on one suite beside the same method trained clean shows how
    far robustness carries over to corruptions it never saw (the other suite)."""
    m = select(metrics, study, conditions=study["conditions"]).query("metric == 'accuracy'")
    s = summarise(m, ["dataset", "backbone", "method", "fraction", "shots", "condition"])
    s["model"] = [
        f"{meth}@{k}-shot" if k > 0 else f"{meth}" if f == 0 else f"{meth}@{f:g}%"
        for meth, f, k in zip(s["method"], s["fraction"], s["shots"])
    ]
    numbers = s.pivot_table(index=["dataset", "backbone", "model"], columns="condition", values="mean", sort=False)
    conditions = [c for c in study["conditions"] if c in numbers.columns]
    numbers = numbers[conditions]
    for suite, names in SUITES.items():
        present = [c for c in conditions if c in names]
        if present:
            numbers[f"mean {suite}"] = numbers[present].mean(axis=1)
    numbers = numbers.reset_index()
    trained = dict(zip(s["model"], zip(s["method"], s["fraction"], s["shots"])))
    numbers.insert(3, "trained on", [_trained_on(methods, *trained[model]) for model in numbers["model"]])
    pretty = numbers.copy()
    for col in numbers.columns[4:]:
        pretty[col] = numbers[col].map(lambda v: format_cell(v, float("nan"), "accuracy"))
    return (*add_not_run_rows(numbers, pretty, study, not_run(study), "model"), None)


def _trained_on(methods: dict, method: str, fraction: float, shots: int) -> str:
    """'clean', or the suite whose corruptions a variant also trained on; '–' without training."""
    if fraction == 0 and shots == 0:
        return "–"
    on = methods.get(method.split("+")[0], {}).get("train_conditions", "clean")
    return "pathclip" if on == "augmented" else on


def drawn_methods(frame: pd.DataFrame, study: dict, methods: dict) -> list[tuple[str, tuple[str, str, str]]]:
    """The methods a figure draws with their ``(colour, marker, line style)``, in the tables'
    order: the study's own, each in its colour of every figure (its place in the study's list),
    solid; and the runs named after one (a stage on it, ``linear_probe+transclip``; a WiSE-FT
    mix), in that method's colour and marker, dotted."""
    names = [m for m in dict.fromkeys(frame["method"]) if bool(of_study([m], study).iloc[0])]
    rank = lambda m: (methods.get(m.split("+")[0], {}).get("order", float("inf")), m)  # noqa: E731
    styles = dict(zip(study["methods"], method_styles(study["methods"])))
    return [(m, (*styles[m.split("+")[0]], ":" if "+" in m else "-")) for m in sorted(names, key=rank)]


def legend(ax, n_methods: int) -> None:
    """Inside the panel for a few methods; beside it for many, where it would hide the lines."""
    if n_methods > 8:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8)


def _accuracy_against(inputs: dict, study: dict, methods: dict, path, usage: str) -> None:
    """Accuracy vs. ``usage`` (``fraction`` or ``shots``, log x), mean and 95 % CI band over seeds;
    one panel per dataset; methods without training data as horizontal lines."""
    metrics = pd.read_csv(inputs["metrics"])
    if "shots" not in metrics:
        metrics["shots"] = float("nan")
    other = "shots" if usage == "fraction" else "fraction"
    m = metrics[
        (metrics["metric"] == "accuracy")
        & (metrics["condition"] == "clean")
        & (metrics["group"] == "all")
        & metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"][:1])
        & metrics[other].isna()
    ]
    datasets = study["datasets"]
    drawn = drawn_methods(m, study, methods)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = m[m["dataset"] == dataset]
        for method, (colour, marker, line) in drawn:
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            if rows["seed"].isna().all():
                ax.axhline(100 * rows["value"].mean(), color=colour, ls="--" if line == "-" else ":", label=label(methods, method))
                continue
            s = summarise(rows, [usage]).sort_values(usage)
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s[usage], 100 * s["mean"], marker=marker, ls=line, color=colour, label=label(methods, method))
            ax.fill_between(s[usage], 100 * (s["mean"] - ci), 100 * (s["mean"] + ci), color=colour, alpha=0.2)
        ax.set_xscale("log", base=2 if usage == "shots" else 10)
        ax.set_xlabel("training images per class" if usage == "shots" else "training data used (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    legend(axes[0][-1], len(drawn))
    save(fig, path)


def accuracy_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Accuracy vs. share of training data (log x), mean and 95 % CI band over seeds; one panel per dataset."""
    _accuracy_against(inputs, study, methods, path, "fraction")


def shots_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Accuracy vs. training images per class (log x): the few-shot protocol's curves."""
    _accuracy_against(inputs, study, methods, path, "shots")


def training_time_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Training wall time against the share of training data (log-log), per method, mean and CI over seeds."""
    costs = fraction_rows(pd.read_csv(inputs["costs"]))
    c = costs[costs["dataset"].isin(study["datasets"]) & costs["backbone"].isin(study["backbones"][:1])
              & of_study(costs["method"], study) & costs["seed"].notna()]
    datasets = study["datasets"]
    drawn = drawn_methods(c, study, methods)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = c[c["dataset"] == dataset]
        for method, (colour, marker, line) in drawn:  # the accuracy figure's styles
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            s = summarise(rows, ["fraction"], "wall_seconds").sort_values("fraction")
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s["fraction"], s["mean"], marker=marker, ls=line, color=colour, label=label(methods, method))
            ax.fill_between(s["fraction"], np.maximum(s["mean"] - ci, 1e-3), s["mean"] + ci, color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("training time (s)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3, which="both")
    legend(axes[0][-1], len(drawn))
    save(fig, path)


def confusion_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Confusion matrix of the most accurate zero-shot or frozen-feature run (clean test split)."""
    from pathlib import Path

    from medtune.data.store import read_samples
    from medtune.heads import load_head, predict
    from medtune.records import read_runs

    # the heads of runs trained inside the backbone (their manifests list their own weights) read
    # their own encoder's features, not the pretrained backbone's that this figure predicts from
    runs = [r for r in read_runs(inputs["runs"]) if "weights" not in r["files"]]
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


def reliability_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Reliability diagram (15 bins) of the most accurate run of each method, clean test split, from
    the predictions each run saved (a run trained inside the backbone: on its own re-encoded features)."""
    from matplotlib.colors import to_rgba

    from medtune.metrics import calibration_bins, expected_calibration_error, softmax
    from medtune.records import read_predictions, read_runs

    runs = [r for r in read_runs(inputs["runs"]) if "predictions" in r["files"] and r.get("shots") is None]
    key = lambda method, seed, fraction: (method, None if pd.isna(seed) else int(seed), None if pd.isna(fraction) else float(fraction))
    by_key = {key(r["method"], r["seed"], r["fraction"]): r for r in runs}
    metrics = pd.read_csv(inputs["metrics"])
    m = metrics[
        (metrics["condition"] == "clean") & (metrics["group"] == "all") & (metrics["metric"] == "accuracy")
        & metrics["dataset"].isin({r["dataset"] for r in runs}) & metrics["backbone"].isin({r["backbone"] for r in runs})
    ]
    m = fraction_rows(m)  # the shot runs are left out, as in the figures against the fraction
    m = m[[key(*row) in by_key for row in zip(m["method"], m["seed"], m["fraction"])]]
    best = m.sort_values(["value", "seed", "fraction"], ascending=[False, True, True]).groupby("method", sort=False).head(1)
    shown = [name for name in study["methods"] if name in set(best["method"])]
    cols = min(len(shown), 4) or 1
    rows = -(-len(shown) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, shown):
        colour = PALETTE[study["methods"].index(name) % len(PALETTE)]  # the accuracy figure's colours
        row = best[best["method"] == name].iloc[0]
        run = by_key[key(row["method"], row["seed"], row["fraction"])]
        saved = read_predictions(run["files"]["predictions"])
        probs = softmax(saved["logits"].astype(np.float64))
        bins = calibration_bins(saved["labels"], probs, 15)
        edges, share = bins["edges"], bins["count"][:-1] / bins["count"].sum()
        # a confidence of exactly 1 has a bin of its own: drawn with the last bar's
        acc = bins["accuracy"][:-1].copy()
        if bins["count"][-1]:
            n = bins["count"][-2:]
            acc[-1] = (bins["accuracy"][-2:] * n).sum() / n.sum()
            share[-1] += bins["count"][-1] / bins["count"].sum()
        filled = share > 0
        shades = [to_rgba(colour, 0.35 + 0.65 * s / share.max()) for s in share[filled]]
        ax.bar(edges[:-1][filled], acc[filled], width=np.diff(edges)[filled], align="edge", color=shades,
               edgecolor="black", linewidth=0.4)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        setting = "pretrained" if run["seed"] is None else f"seed {run['seed']}, {run['fraction']:g} %"
        ece = expected_calibration_error(saved["labels"], probs, 15)
        ax.set_title(f"{label(methods, name)}\n{setting}: ECE {100 * ece:.1f} %", fontsize=8)
    save(fig, path)
