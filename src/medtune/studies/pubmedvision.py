"""Image–text fine-tuning on PubMedVision (seed 001): pretrained vs fine-tuned on captions
vs fine-tuned on class-label texts; top-1 / top-3 overall and per body part (group)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.figures import PALETTE, label, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import add_not_run_columns, format_cell, method_order, not_run, select, summarise

SPEC = {
    "label": "PubMedVision",
    "conditions": ["clean"],
    "tables": {
        "pubmedvision_topk": {"function": "topk_table", "title": "PubMedVision-style top-1 / top-3 accuracy per group"},
        "pubmedvision_paper": {
            "function": "paper_table",
            "title": "PubMedVision: overall top-1 / top-3, ours vs published",
            "when": "paper:pubmedvision_topk",
        },
    },
    "figures": {
        "pubmedvision_groups": {
            "function": "groups_figure",
            "inputs": ["metrics"],
            "caption": "Top-1 accuracy of predicting the body part (group) among all labels, per body part and "
            "overall, for the pretrained model and each fine-tuned one (seed 001's per-body-part chart): one bar per "
            "model, whiskers the 95 % t-interval over seeds when there are several.",
        },
    },
}


def topk_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Top-1 / top-3 overall ('all') and per group, one column pair per model."""
    m = select(metrics, study, group=None)
    m = m[m["metric"].isin(["top1", "top3"])]
    s = summarise(m, ["dataset", "backbone", "method", "group", "metric"])
    numbers = s.pivot_table(index=["dataset", "group"], columns=["backbone", "method", "metric"], values="mean")
    numbers.columns = [f"{b}/{meth}/{metric}" for b, meth, metric in numbers.columns]
    numbers = numbers.reset_index()
    numbers = pd.concat([numbers[numbers["group"] == "all"], numbers[numbers["group"] != "all"]], ignore_index=True)
    pretty = numbers.copy()
    for col in numbers.columns[2:]:
        pretty[col] = numbers[col].map(lambda v: format_cell(v, float("nan"), "top1"))
    best = {c: c for c in numbers.columns[2:]}
    if len(numbers):
        numbers, pretty = add_not_run_columns(numbers, pretty, {**study, "datasets": [None]}, not_run(study), ["top1", "top3"],
                                              lambda d, b, meth, metric: f"{b}/{meth}/{metric}")
    return numbers, pretty, best


def paper_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Overall top-1 / top-3 of each model beside the published numbers."""
    numbers, _, _ = topk_table(metrics, costs, study, methods)
    paper = study["paper"]["pubmedvision_topk"]
    published = pd.DataFrame(paper["rows"], columns=paper["columns"]).set_index("method")
    overall = numbers[numbers["group"] == "all"]
    rows = []
    for col in overall.columns[2:]:
        backbone, method, metric = col.split("/")
        if metric in published.columns and method in published.index:
            ours, theirs = float(overall[col].mean()), float(published.loc[method, metric])
            rows.append((backbone, method, metric, ours, theirs, ours - theirs))
    out = pd.DataFrame(rows, columns=["backbone", "method", "metric", "ours", "paper", "delta"])
    pretty = out.copy()
    for col in ("ours", "paper", "delta"):
        pretty[col] = out[col].map(lambda v: format_cell(v, float("nan"), "top1"))
    return out, pretty, None


def groups_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Top-1 per group, one bar per model (backbone x method), CI whiskers over seeds."""
    m = select(pd.read_csv(inputs["metrics"]), study, group=None).query("metric == 'top1'")
    s = summarise(m, ["dataset", "backbone", "method", "group"])
    datasets = study["datasets"]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6.0, 1.1 * s["group"].nunique() + 3), 3.4 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        d = s[s["dataset"] == dataset]
        groups = ["all"] + sorted(g for g in d["group"].unique() if g != "all")
        order = method_order(d[["backbone", "method"]].drop_duplicates().assign(fraction=0.0), methods)
        models = list(zip(order["backbone"], order["method"]))
        width = 0.8 / max(len(models), 1)
        for i, (backbone, method) in enumerate(models):
            rows = d[(d["backbone"] == backbone) & (d["method"] == method)].set_index("group").reindex(groups)
            ci = 100 * np.nan_to_num(rows["ci95"].to_numpy())
            x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
            name = label(methods, method) if len(study["backbones"]) == 1 else f"{backbone}: {label(methods, method)}"
            ax.bar(x, 100 * rows["mean"].to_numpy(), width, yerr=ci if ci.any() else None, capsize=2,
                   color=PALETTE[i % len(PALETTE)], label=name)
        ax.set_xticks(np.arange(len(groups)), ["overall" if g == "all" else g for g in groups], rotation=20, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(dataset)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save(fig, path)
