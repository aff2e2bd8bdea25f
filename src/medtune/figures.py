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


def robustness_by_severity(metrics: pd.DataFrame, study: dict, path, metric_names=("accuracy", "ha@5")) -> None:
    """Seed 002 Fig. 4/5: metric vs severity, one panel per corruption, a line per backbone (zero-shot)."""
    from medtune.conditions import CORRUPTIONS, SEVERITY_LABEL, parse_condition

    m = metrics[
        (metrics["method"] == "zeroshot")
        & (metrics["group"] == "all")
        & metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"])
        & metrics["condition"].isin(study["conditions"])
    ]
    corruptions = [c for c in CORRUPTIONS if any(parse_condition(x)[0] == c for x in study["conditions"])] or ["clean"]
    rows = [(d, name) for d in study["datasets"] for name in metric_names]
    fig, axes = plt.subplots(len(rows), len(corruptions), figsize=(2.6 * len(corruptions), 2.4 * len(rows)), squeeze=False)
    for r, (dataset, metric) in enumerate(rows):
        d = m[(m["dataset"] == dataset) & (m["metric"] == metric)]
        clean = d[d["condition"] == "clean"]
        for c, corruption in enumerate(corruptions):
            ax = axes[r][c]
            for colour, backbone in zip(PALETTE, study["backbones"]):
                b = d[(d["backbone"] == backbone) & d["condition"].map(lambda x: parse_condition(x)[0] == corruption)]
                b = pd.concat([b, clean[clean["backbone"] == backbone]])
                if b.empty:
                    continue
                s = b.assign(severity=b["condition"].map(SEVERITY_LABEL)).groupby("severity")["value"].mean()
                ax.plot(s.index, 100 * s.values, marker="o", color=colour, label=backbone)
            ax.set_title(f"{corruption} · {dataset}" if r == 0 or len(study["datasets"]) > 1 else corruption, fontsize=9)
            ax.set_xlabel("severity level")
            if c == 0:
                ax.set_ylabel(f"{metric} (%)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save(fig, path)


def corruption_gallery(images: np.ndarray, index: int, conditions, path) -> None:
    """Seed 002 Fig. 1: one image under every corruption (rows) and severity (columns)."""
    import torch

    from medtune.conditions import CORRUPTIONS, SEVERITY_LABEL, parse_condition
    from medtune.corrupt import apply

    x = torch.from_numpy(np.ascontiguousarray(images[index : index + 1])).permute(0, 3, 1, 2)
    rows = [c for c in CORRUPTIONS if any(parse_condition(k)[0] == c for k in conditions)]
    fig, axes = plt.subplots(len(rows), 5, figsize=(7.5, 1.6 * max(len(rows), 1)), squeeze=False)
    for r, corruption in enumerate(rows):
        names = ["clean"] + [k for k in conditions if parse_condition(k)[0] == corruption]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(names):
                ax.imshow(apply(x, names[c], keys=[index])[0].permute(1, 2, 0).numpy())
                label = "Origin" if names[c] == "clean" else f"{corruption} {SEVERITY_LABEL[names[c]]:+d}"
                ax.set_title(label, fontsize=8)
    fig.tight_layout()
    save(fig, path)
