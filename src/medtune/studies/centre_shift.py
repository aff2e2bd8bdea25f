"""Centre-shift robustness (beyond the seeds), as PathoROB measures it (Kömen et al. 2025,
``bifold-pathomics/PathoROB``): each backbone's robustness index (:mod:`medtune.robustness_index`) on
images of several centres, and the accuracy every run loses from in-centre to out-of-centre images.

Which images: the index needs at least two centres with every class, so it runs on the split
``index_split`` names — by default the validation split, which in the embedded default holds
centres A and B (the test split is centre D alone: no image there has another centre to be
confused with), and on Camelyon17-WILDS the training split (hospitals 0, 3, 4; its validation and
test splits are one hospital each). The accuracy drop compares the validation images from centres
the training split has (in-centre) with the test images from centres it lacks (out-of-centre),
from the logits each run's job keeps. The in-centre images selected each model (validation), so
that accuracy is a little optimistic; PathoROB's APD holds out in-centre test images instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.conformal import read_logits
from medtune.figures import PALETTE, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import fill_unused_labels, format_cell, in_study, method_order, model_label, summarise

SPEC = {
    "label": "Robustness beyond corruptions",
    "conditions": ["clean"],
    "logits": True,
    "defaults": {"index_split": "val", "k_max": 600, "bootstrap": 1000, "index_images_per_cell": None, "index_seed": 0},
    "params": {
        "index_split": {"enum": ["train", "val", "test"], "description": "the split whose images the robustness index runs on (at least two sites)"},
        "k_max": {"type": "integer", "minimum": 1, "description": "the largest k of PathoROB's grid (1, 3, 5, 7, 9, 11, 21, ...; its Camelyon: 600)"},
        "bootstrap": {"type": "integer", "minimum": 2, "description": "bootstrap resamples of the images for the index's standard deviation"},
        "index_images_per_cell": {"type": ["integer", "null"], "minimum": 1, "description": "at most this many images of each class x site (a seeded draw); null: all"},
        "index_seed": {"type": "integer", "minimum": 0},
    },
    "tables": {
        "robustness_index": {
            "function": "index_table",
            "inputs": ["robustness_index"],
            "title": "Centre-shift robustness index (PathoROB): share of same-class/other-centre among the same-class/"
            "other-centre and other-class/same-centre neighbours, over each image's k_opt nearest neighbours (k_opt: the "
            "best kNN balanced accuracy), ± bootstrap standard deviation",
        },
        "centre_shift_accuracy": {
            "function": "accuracy_table",
            "inputs": ["runs"],
            "title": "Accuracy (%) on validation images from the training split's centres (in-centre) and on test images "
            "from other centres (out-of-centre), and the drop between them",
        },
    },
    "figures": {
        "robustness_index": {
            "function": "index_figure",
            "inputs": ["robustness_index"],
            "caption": "Robustness index (PathoROB) against the number of neighbours k, a line per backbone of the first "
            "dataset, the marker at k_opt (the k of best kNN balanced accuracy, where the table reads it); 1: an image's "
            "neighbours share its class whatever their centre, 0: they share its centre whatever their class.",
        },
    },
}


def index_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict, robustness_index=()):
    records = [r for r in robustness_index if r["dataset"] in study["datasets"] and r["backbone"] in study["backbones"]]
    if not records:
        return pd.DataFrame(), pd.DataFrame(), None
    numbers = pd.DataFrame([{k: r[k] for k in ("dataset", "backbone", "split", "n_images", "k_opt", "knn_balanced_accuracy",
                                               "robustness_index", "robustness_index_std")} | {"sites": ", ".join(r["sites"])}
                            for r in records])
    pretty = numbers[["dataset", "backbone", "split", "sites", "n_images", "k_opt"]].rename(columns={"n_images": "images"})
    pretty["kNN balanced accuracy"] = numbers["knn_balanced_accuracy"].map(lambda v: format_cell(v, float("nan"), "accuracy"))
    pretty["robustness index"] = [f"{v:.3f} ± {s:.3f}" for v, s in zip(numbers["robustness_index"], numbers["robustness_index_std"])]
    return numbers, pretty, {"robustness index": "robustness_index"}


def index_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    from medtune.io import read_json

    files = inputs["robustness_index"]
    records = [read_json(f) for f in ([files] if isinstance(files, str) else files)]
    records = [r for r in records if r["dataset"] == study["datasets"][0]]
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for colour, r in zip(PALETTE * 4, records):
        ax.plot(r["k"], r["robustness_index_by_k"], color=colour, lw=1.2, label=f"{r['backbone']} (k_opt {r['k_opt']})")
        ax.plot([r["k_opt"]], [r["robustness_index"]], "o", color=colour, ms=4)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("neighbours k", fontsize=8)
    ax.set_ylabel("robustness index", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if records:
        ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, path)


def centre_accuracies(run: dict) -> dict | None:
    """In-centre (validation images of the training split's sites) and out-of-centre (clean test images of
    other sites) accuracy of a run from its logits; None when its dataset has no sites."""
    saved = read_logits(run["files"]["logits"])
    if "val_site" not in saved:
        return None
    inside = np.isin(saved["val_site"], saved["train_sites"])
    outside = ~np.isin(saved["test_site"], saved["train_sites"])
    clean = list(saved["conditions"]).index("clean")

    def accuracy(logits, labels, mask):
        return float((logits[mask].argmax(1) == labels[mask]).mean()) if mask.any() else float("nan")

    return {
        "in_centre": accuracy(saved["val_logits"], saved["val_labels"], inside),
        "out_of_centre": accuracy(saved["test_logits"][clean], saved["test_labels"], outside),
        "in_sites": ", ".join(sorted(set(saved["val_site"][inside]))),
        "out_sites": ", ".join(sorted(set(saved["test_site"][outside]))),
    }


def accuracy_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict, runs=()):
    rows = []
    for run in runs:
        if in_study(run, study) and "logits" in run["files"] and (found := centre_accuracies(run)) is not None:
            rows.append({k: run.get(k) for k in ("dataset", "backbone", "method", "seed", "fraction", "shots")} | found)
    if not rows:
        return pd.DataFrame(), pd.DataFrame(), None
    frame = fill_unused_labels(pd.DataFrame(rows))
    frame["drop"] = frame["in_centre"] - frame["out_of_centre"]
    frame["relative_drop"] = 1 - frame["out_of_centre"] / frame["in_centre"]
    keys = ["dataset", "backbone", "method", "fraction", "shots", "in_sites", "out_sites"]
    columns = {"in_centre": "in-centre accuracy", "out_of_centre": "out-of-centre accuracy", "drop": "drop (points)", "relative_drop": "relative drop (%)"}
    parts = [summarise(frame, keys, value).rename(columns={"mean": value, "ci95": f"{value}_ci95"}).drop(columns="n") for value in columns]
    numbers = parts[0]
    for part in parts[1:]:
        numbers = numbers.merge(part, on=keys)
    numbers = method_order(numbers, methods).reset_index(drop=True)
    pretty = numbers[["dataset", "backbone"]].copy()
    pretty["model"] = [model_label(methods, m, f, k) for m, f, k in zip(numbers["method"], numbers["fraction"], numbers["shots"])]
    pretty["in-centre sites"], pretty["out-of-centre sites"] = numbers["in_sites"], numbers["out_sites"]
    for value, title in columns.items():
        pretty[title] = [format_cell(v, c, "accuracy") for v, c in zip(numbers[value], numbers[f"{value}_ci95"])]
    return numbers, pretty, {"out-of-centre accuracy": "out_of_centre"}
