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
LABELS = {
    "zeroshot": "zero-shot",
    "linear_probe": "linear probe",
    "linear_probe_augmented": "linear probe + corruption aug.",
    "rfc": "CLIP + RFC",
    "rfc_augmented": "CLIP + RFC + corruption aug.",
    "coop": "CLIP + CoOp",
    "finetune_label": "full fine-tuning (labels)",
    "finetune_caption": "full fine-tuning (captions)",
}


def save(fig, path) -> None:
    """PNG for screens and the report, and a PDF beside it for print."""
    for target in (str(path), str(path).rsplit(".", 1)[0] + ".pdf"):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=target.rsplit(".", 1)[-1], dpi=200, bbox_inches="tight")
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

    x = torch.tensor(images[index : index + 1]).permute(0, 3, 1, 2)  # a copy of the read-only memory map
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


def training_time_vs_fraction(costs: pd.DataFrame, study: dict, path) -> None:
    """Training wall time against the share of training data (log-log), per method, mean and CI over seeds."""
    c = costs[costs["dataset"].isin(study["datasets"]) & costs["backbone"].isin(study["backbones"][:1]) & costs["method"].isin(study["methods"])]
    datasets = study["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = c[c["dataset"] == dataset]
        for colour, method in zip(PALETTE[1:], [m for m in study["methods"] if m != "zeroshot"]):
            rows = d[d["method"] == method]
            if rows.empty:
                continue
            s = summarise(rows, ["fraction"], "wall_seconds").sort_values("fraction")
            ci = np.nan_to_num(s["ci95"].to_numpy())
            ax.plot(s["fraction"], s["mean"], marker="o", color=colour, label=LABELS.get(method, method))
            ax.fill_between(s["fraction"], np.maximum(s["mean"] - ci, 1e-3), s["mean"] + ci, color=colour, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("training time (s)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8)
    save(fig, path)


def confusion(labels: np.ndarray, logits: np.ndarray, class_names: list[str], title: str, path) -> None:
    """Per-class confusion matrix (rows: true class, normalised per row)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ConfusionMatrixDisplay.from_predictions(
        labels, logits.argmax(1), labels=np.arange(len(class_names)), display_labels=class_names,
        normalize="true", values_format=".2f", cmap="Blues", ax=ax, colorbar=False,
    )
    ax.set_title(title, fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    save(fig, path)


def retrieval_examples(images: np.ndarray, indices: np.ndarray, labels: np.ndarray, features: np.ndarray, path, k: int = 5, n_queries: int = 4) -> None:
    """Queries (left) and their top-k neighbours by cosine similarity; a green frame marks the query's class, red another."""
    feats = features / np.linalg.norm(features, axis=1, keepdims=True)
    queries = np.linspace(0, len(feats) - 1, n_queries).astype(int)
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(1.5 * (k + 1), 1.6 * n_queries), squeeze=False)
    for row, q in enumerate(queries):
        sims = feats @ feats[q]
        sims[q] = -np.inf  # the query is not its own candidate
        top = np.argsort(-sims, kind="stable")[:k]
        for col, j in enumerate([q, *top]):
            ax = axes[row][col]
            ax.imshow(images[indices[j]])
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if col == 0 else ("#009E73" if labels[j] == labels[q] else "#D55E00")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            if row == 0:
                ax.set_title("query" if col == 0 else f"top {col}", fontsize=8)
    save(fig, path)


def best_run_confusion(metrics_path, study: dict, heads: list[str], test_dir, samples_path, path) -> None:
    """Confusion matrix of the most accurate frozen-backbone run (clean test split) of the CLIPath study."""
    from pathlib import Path

    from medtune.data.store import read_samples
    from medtune.methods import load_head, predict
    from medtune.plan import FROZEN_METHODS, Run, format_fraction

    metrics = pd.read_csv(metrics_path)
    dataset, backbone = study["datasets"][0], study["backbones"][0]
    m = metrics[
        (metrics["dataset"] == dataset) & (metrics["backbone"] == backbone) & (metrics["condition"] == "clean")
        & (metrics["group"] == "all") & (metrics["metric"] == "accuracy")
        & metrics["method"].isin([x for x in study["methods"] if x in ("zeroshot", *FROZEN_METHODS)])
    ]
    best = m.sort_values(["value", "method", "fraction", "seed"], ascending=[False, True, True, True]).iloc[0]
    run = Run(dataset, best["method"], backbone) if best["method"] == "zeroshot" else Run(
        dataset, best["method"], backbone, int(best["seed"]), format_fraction(best["fraction"])
    )
    test = read_samples(samples_path).query("split == 'test'")
    names = test[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"].tolist()
    head = next(h for h in heads if Path(h).as_posix().endswith(f"/runs/{run.path}/head.pt"))
    logits = predict(load_head(head), np.load(Path(test_dir) / "clean.npy"))
    title = f"{LABELS.get(run.method, run.method)}, {run.setting.replace('/', ', ')}: accuracy {100 * best['value']:.1f} %"
    confusion(test["label"].to_numpy(), logits, names, title, path)
