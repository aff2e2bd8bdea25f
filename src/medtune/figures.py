"""Figures from the tidy metric rows (matplotlib, colour-blind-safe palette)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from medtune.io import atomic_path  # noqa: E402
from medtune.tables import summarise  # noqa: E402

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
LABELS = {"zeroshot": "zero-shot", "linear_probe": "linear probe", "rfc": "CLIP + RFC", "coop": "CLIP + CoOp"}


def save(fig, path) -> None:
    suffix = str(path).rsplit(".", 1)[-1]
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=200, bbox_inches="tight")
    plt.close(fig)


def accuracy_vs_fraction(metrics: pd.DataFrame, study: dict, path) -> None:
    """Accuracy vs. share of training data (log x), mean and 95 % CI band over seeds; one panel per dataset."""
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
        for colour, method in zip(PALETTE, study["methods"]):
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            if rows["fraction"].isna().all():
                ax.axhline(100 * rows["value"].mean(), color=colour, ls="--", label=LABELS.get(method, method))
                continue
            s = summarise(rows, ["fraction"]).sort_values("fraction")
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s["fraction"], 100 * s["mean"], marker="o", color=colour, label=LABELS.get(method, method))
            ax.fill_between(s["fraction"], 100 * (s["mean"] - ci), 100 * (s["mean"] + ci), color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    save(fig, path)
