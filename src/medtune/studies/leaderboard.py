"""Leaderboard (beyond the seeds): every backbone with every method it supports, ranked as eva
ranks its leaderboards: by balanced accuracy averaged over the datasets (eva: over its tasks),
each dataset's the mean over seeds (eva: over 5 runs). Here the ranking is made per data usage
(a share of the training data, k images per class, or none for zero-shot), each entry with the
95 % t-interval over seeds of its mean over datasets, and beside it the mean balanced accuracy
under each robustness suite's corruptions. A (backbone, method) pair the plan leaves out (the
method needs a text tower the backbone lacks) is a row of "—".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.conditions import SUITES
from medtune.figures import PALETTE, label, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import add_not_run_rows, format_cell, mean_ci, not_run, select, summarise, usage

SPEC = {
    "label": "Leaderboard",
    "conditions": ["clean"],
    "tables": {
        "leaderboard": {
            "function": "leaderboard_table",
            "title": "Leaderboard: balanced accuracy (%) on each dataset's clean test split and their mean, ranked by that "
            "mean within each data usage (mean ± 95 % t-interval over seeds), and the mean under each robustness suite's "
            "corruptions",
        },
    },
    "figures": {
        "leaderboard": {
            "function": "leaderboard_figure",
            "inputs": ["metrics"],
            "caption": "The leaderboard: balanced accuracy on the clean test splits, averaged over the study's datasets, "
            "of every backbone with every method it runs, one panel per data usage, best first; whiskers the 95 % "
            "t-interval over seeds of that average (none for zero-shot, which has no seeds). A method needing a text "
            "tower does not run on a vision-only backbone and is missing here (a row of — in the table).",
        },
    },
}
METRIC = "balanced_accuracy"
ENTRY = ["backbone", "method", "fraction", "shots"]


def _usage_order(fraction: float, shots: int) -> tuple[int, float]:
    """Zero-shot first, then the shot counts, then the shares of the training data."""
    return (0, 0.0) if fraction == 0 and shots == 0 else (1, float(shots)) if shots > 0 else (2, float(fraction))


def standings(metrics: pd.DataFrame, study: dict) -> pd.DataFrame:
    """One row per entry (backbone, method, fraction, shots): per dataset the mean and interval over
    seeds of clean balanced accuracy, ``mean`` / ``ci95`` of the per-seed mean over the datasets (an
    entry missing a dataset gets none), ``rank`` within its data usage (competition ranking: ties
    share a rank, the next one skips), and ``suite:{name}`` the mean under that suite's corruptions."""
    m = select(metrics, study, conditions=study["conditions"])
    m = m[m["metric"] == METRIC]
    if m.empty:
        return pd.DataFrame(columns=[*ENTRY, "mean", "ci95", "n", "rank"])
    clean = m[m["condition"] == "clean"]
    per_dataset = summarise(clean, [*ENTRY, "dataset"]).pivot_table(index=ENTRY, columns="dataset", values=["mean", "ci95"])
    per_dataset.columns = [f"{dataset}:{stat}" for stat, dataset in per_dataset.columns]
    datasets = list(study["datasets"])
    per_seed = clean.groupby([*ENTRY, "seed"], dropna=False)["value"].agg(["mean", "count"]).reset_index()
    complete = per_seed[per_seed["count"] == len(datasets)]
    rows = []
    for key, group in complete.groupby(ENTRY, sort=False):
        mean, ci, n = mean_ci(group["mean"])
        rows.append((*key, mean, ci, n))
    overall = pd.DataFrame(rows, columns=[*ENTRY, "mean", "ci95", "n"]).set_index(ENTRY)
    table = per_dataset.join(overall, how="left").reset_index()
    for suite, names in SUITES.items():
        corrupted = m[m["condition"].isin(names) & (m["condition"] != "clean")]
        if len(corrupted):
            # mean over seeds per dataset and condition, then over both
            means = corrupted.groupby([*ENTRY, "dataset", "condition"], dropna=False)["value"].mean()
            table = table.merge(means.groupby(ENTRY, dropna=False).mean().rename(f"suite:{suite}").reset_index(), on=ENTRY, how="left")
    table["_usage"] = [_usage_order(f, k) for f, k in zip(table["fraction"], table["shots"])]
    table["rank"] = table.groupby("_usage")["mean"].rank(method="min", ascending=False)
    table = table.sort_values(["_usage", "rank", "backbone", "method"], na_position="last").drop(columns="_usage")
    return table.reset_index(drop=True)


def leaderboard_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    numbers = standings(metrics, study)
    pretty = pd.DataFrame({
        "data usage": [usage(f, k) for f, k in zip(numbers["fraction"], numbers["shots"])],
        "rank": numbers["rank"].map(lambda r: "–" if pd.isna(r) else f"{int(r)}"),
        "backbone": numbers["backbone"],
        "method": [label(methods, m) for m in numbers["method"]],
    })
    for dataset in study["datasets"]:
        if f"{dataset}:mean" in numbers:
            pretty[dataset] = [format_cell(a, b, METRIC) for a, b in zip(numbers[f"{dataset}:mean"], numbers[f"{dataset}:ci95"])]
    pretty["mean"] = [format_cell(a, b, METRIC) for a, b in zip(numbers["mean"], numbers["ci95"])]
    for column in [c for c in numbers.columns if c.startswith("suite:")]:
        pretty[f"{column[6:]} corruptions"] = numbers[column].map(lambda v: format_cell(v, float("nan"), METRIC))
    pretty["seeds"] = numbers["n"].map(lambda n: "–" if pd.isna(n) else f"{int(n)}")
    numbers, pretty = add_not_run_rows(numbers, pretty, study, not_run(study), name=lambda m: label(methods, m))
    return numbers, pretty, None


def leaderboard_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """One panel per data usage: the mean over datasets of each entry, best at the top."""
    table = standings(pd.read_csv(inputs["metrics"]), study).dropna(subset=["mean"])
    groups = list(table.groupby(["fraction", "shots"], sort=False))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(study["methods"])}
    height = max([len(g) for _, g in groups], default=1)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 0.9 + 0.32 * height), squeeze=False)
    for ax, ((fraction, shots), group) in zip(axes[0], groups):
        group = group.iloc[::-1]  # barh draws bottom-up: the first rank on top
        y = np.arange(len(group))
        error = (100 * group["ci95"]).fillna(0).to_numpy()
        ax.barh(y, 100 * group["mean"], xerr=error, color=[colours.get(m, "grey") for m in group["method"]], capsize=2)
        ax.set_yticks(y, [f"{b} · {label(methods, m)}" for b, m in zip(group["backbone"], group["method"])], fontsize=7)
        ax.set_xlabel("balanced accuracy (%)")
        ax.set_title(usage(fraction, shots), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if not groups:
        axes[0][0].text(0.5, 0.5, "no complete entry yet", ha="center", va="center")
        axes[0][0].axis("off")
    fig.tight_layout()
    save(fig, path)
