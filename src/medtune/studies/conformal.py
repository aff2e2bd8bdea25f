"""Prediction sets with coverage (beyond the seeds): split conformal prediction (:mod:`medtune.conformal`;
CLIP-Conformal, ``jusiro/CLIP-Conformal``) of zero-shot and adapted heads, from the logits their jobs keep.

Each run is calibrated on a seeded, class-stratified half of the validation split and its sets are
scored on the other half (exchangeable with the calibration images: coverage near 1 - alpha, the
guarantee's check) and on the test split under each condition of the study. In the embedded default
the test split is a centre no model saw, so "clean" is already a centre shift, and the corruptions
add to it: the table shows by how much coverage falls below 1 - alpha there.
"""

from __future__ import annotations

import pandas as pd

from medtune import conformal
from medtune.figures import PALETTE, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import fill_unused_labels, format_cell, in_study, method_order, model_label, summarise

HELD_OUT = "validation, held-out half"  # the condition of the exchangeable check

SPEC = {
    "label": "Robustness beyond corruptions",
    "conditions": ["clean"],
    "logits": True,
    "defaults": {"alpha": 0.1, "scores": ["lac", "aps"], "calibration_seed": 0},
    "params": {
        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "description": "miscoverage: the sets aim at 1 - alpha"},
        "scores": {"type": "array", "items": {"enum": ["lac", "aps"]}, "minItems": 1, "uniqueItems": True},
        "calibration_seed": {"type": "integer", "minimum": 0, "description": "seeds the half of the validation split that calibrates"},
    },
    "tables": {
        "conformal_coverage": {
            "function": "coverage_table",
            "inputs": ["runs"],
            "title": "Split conformal prediction sets (calibrated on half the validation split): coverage, how far it falls "
            "below 1 - alpha, mean set size and the worst class's coverage, on the held-out half and under each test condition",
        },
    },
    "figures": {
        "conformal_coverage": {
            "function": "coverage_figure",
            "inputs": ["runs"],
            "caption": "Coverage of split conformal prediction sets under each condition, a panel per score (LAC, APS), a "
            "marker per model of the study's first dataset and backbone (mean over seeds); the dashed line is the 1 - alpha "
            "the sets are calibrated for on half the validation split, which the other half (left) keeps.",
        },
    },
}
KEYS = ["dataset", "backbone", "method", "fraction", "shots", "score", "condition"]
VALUES = {"coverage": "coverage", "set_size": "mean set size", "worst_class_coverage": "worst class's coverage"}


def coverage_rows(runs, study: dict) -> pd.DataFrame:
    """One row per run x score x condition: coverage, set size and the worst class's coverage."""
    rows = []
    for run in runs:
        if not in_study(run, study) or "logits" not in run["files"]:
            continue
        saved = conformal.read_logits(run["files"]["logits"])
        calibrates = conformal.calibration_half(saved["val_labels"], study["calibration_seed"])
        conditions = list(saved["conditions"])
        evaluated = [(HELD_OUT, saved["val_logits"][~calibrates], saved["val_labels"][~calibrates])]
        evaluated += [(c, saved["test_logits"][conditions.index(c)], saved["test_labels"]) for c in study["conditions"] if c in conditions]
        labels = {k: run.get(k) for k in ("dataset", "backbone", "method", "seed", "fraction", "shots")}
        for score in study["scores"]:
            q = conformal.calibrate(saved["val_logits"][calibrates], saved["val_labels"][calibrates], score, study["alpha"])
            for condition, logits, y in evaluated:
                found = conformal.set_metrics(conformal.prediction_sets(logits, q, score), y)
                rows.append({**labels, "score": score, "condition": condition, **found})
    return fill_unused_labels(pd.DataFrame(rows)) if rows else pd.DataFrame()


def coverage_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict, runs=()):
    frame = coverage_rows(runs, study)
    if frame.empty:
        return pd.DataFrame(), pd.DataFrame(), None
    parts = [summarise(frame, KEYS, value).rename(columns={"mean": value, "ci95": f"{value}_ci95"}).drop(columns="n") for value in VALUES]
    numbers = parts[0]
    for part in parts[1:]:
        numbers = numbers.merge(part, on=KEYS, sort=False)
    target = 1 - study["alpha"]
    numbers["below_target"] = target - numbers["coverage"]
    # rows: each model (the methods' declared order), its scores, then the conditions in the study's order
    order = {c: i for i, c in enumerate([HELD_OUT, *study["conditions"]])}
    numbers = numbers.assign(_c=numbers["condition"].map(order), _s=numbers["score"].map(study["scores"].index))
    numbers = method_order(numbers.sort_values(["_s", "_c"]), methods)
    numbers = numbers.sort_values(["dataset", "backbone"], kind="stable").drop(columns=["_c", "_s"]).reset_index(drop=True)
    pretty = numbers[["dataset", "backbone"]].copy()
    pretty["model"] = [model_label(methods, m, f, k) for m, f, k in zip(numbers["method"], numbers["fraction"], numbers["shots"])]
    pretty["score"], pretty["condition"] = numbers["score"].str.upper(), numbers["condition"]
    pretty["coverage"] = [format_cell(v, c, "accuracy") for v, c in zip(numbers["coverage"], numbers["coverage_ci95"])]
    pretty[f"below {target:g}"] = numbers["below_target"].map(lambda v: f"{100 * v:+.1f}")
    pretty["mean set size"] = [format_cell(v, c, "set_size") for v, c in zip(numbers["set_size"], numbers["set_size_ci95"])]
    pretty["worst class's coverage"] = [format_cell(v, c, "accuracy") for v, c in
                                        zip(numbers["worst_class_coverage"], numbers["worst_class_coverage_ci95"])]
    pretty.attrs["notes"] = [f"alpha = {study['alpha']:g}: sets calibrated to hold the true class of at least {100 * target:g} % of "
                             "images exchangeable with the calibration half; 'below' is 1 - alpha minus the coverage, in points "
                             "(positive: the guarantee is missed)."]
    return numbers, pretty, None


def coverage_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    from medtune.records import read_runs

    files = inputs["runs"]
    frame = coverage_rows(read_runs([files] if isinstance(files, str) else files), study)
    if not frame.empty:
        frame = frame[(frame["dataset"] == study["datasets"][0]) & (frame["backbone"] == study["backbones"][0])]
    conditions = [HELD_OUT, *study["conditions"]]
    fig, axes = plt.subplots(1, len(study["scores"]), figsize=(0.5 * len(conditions) * len(study["scores"]) + 3, 3.2), squeeze=False, sharey=True)
    models = frame.groupby(["method", "fraction", "shots"], sort=False).size().index if not frame.empty else []
    for ax, score in zip(axes[0], study["scores"]):
        for i, (colour, (method, fraction, shots)) in enumerate(zip(PALETTE * 4, models)):
            one = frame[(frame["score"] == score) & (frame["method"] == method) & (frame["fraction"] == fraction) & (frame["shots"] == shots)]
            mean = one.groupby("condition")["coverage"].mean().reindex(conditions)
            x = [j + 0.08 * (i - len(models) / 2) for j in range(len(conditions))]
            ax.plot(x, 100 * mean.to_numpy(), "o", ms=3.5, color=colour, label=model_label(methods, method, fraction, shots))
        ax.axhline(100 * (1 - study["alpha"]), color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(conditions)), ["val (held out)" if c == HELD_OUT else c for c in conditions], rotation=60, ha="right", fontsize=7)
        ax.set_title(score.upper(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].set_ylabel("coverage (%)", fontsize=8)
    if len(models):
        axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    save(fig, path)
