"""Adversarial robustness (beyond the seeds): untargeted L-infinity PGD against the frozen encoder and
each trained head, with the backbone in the loop (:mod:`medtune.pgd`), under two published protocols:

* ``thunder`` — THUNDER's (MICS-Lab/thunder, ``config/task/adversarial_attack_linear.yaml``):
  epsilon 1.5e-3 and step 1e-3 times each image's intensity range (per channel), 5 steps;
* ``tecoa`` — zero-shot CLIP's (Mao et al., ICLR 2023, cvlab-columbia/ZSRobust4FoundationModel):
  epsilon 1/255 and 4/255, step 1/255, 10 steps here (the paper's evaluation runs 100; raise
  ``attacks: {tecoa: {steps: 100}}`` where a GPU is present).

One job per dataset x backbone x method x protocol attacks the study's runs of that method on a
seeded draw of ``attack_images`` test images and writes metric rows ``pgd-{protocol}-{epsilon}``
(epsilon 0: the same images unattacked).
"""

from __future__ import annotations

import pandas as pd

from medtune import attacks
from medtune.figures import PALETTE, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import fill_unused_labels, format_cell, method_order, model_label, summarise

SPEC = {
    "label": "Robustness beyond corruptions",
    "conditions": ["clean"],
    "defaults": {
        "attacks": {
            "thunder": {"epsilons": [1.5e-3], "step": 1.0e-3, "steps": 5, "unit": "range"},
            "tecoa": {"epsilons": [1, 4], "step": 1, "steps": 10, "unit": "1/255"},
        },
        "attack_images": 1000,
        "attack_batch_size": 128,
    },
    "params": {
        "attacks": {
            "type": "object",
            "minProperties": 1,
            "description": "protocols to run, each {epsilons, step, steps, unit}; thunder and tecoa take their published "
            "settings for what is not given, another name must give all four",
            "propertyNames": {"pattern": "^[A-Za-z0-9_]+$"},
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "epsilons": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1, "uniqueItems": True},
                    "step": {"type": "number", "exclusiveMinimum": 0},
                    "steps": {"type": "integer", "minimum": 1},
                    "unit": {"enum": ["range", "1/255"], "description": "range: a fraction of each image's channel range; 1/255 of the pixel scale"},
                },
            },
        },
        "attack_images": {"type": ["integer", "null"], "minimum": 1, "description": "test images attacked per run (a seeded draw; null: all)"},
        "attack_batch_size": {"type": "integer", "minimum": 1, "description": "images per PGD batch on the job's device"},
    },
    "tables": {
        "adversarial_accuracy": {
            "function": "accuracy_table",
            "title": "Adversarial robustness: test accuracy (%) of each model on the attacked images, clean and under "
            "untargeted L-inf PGD with a random start (THUNDER's protocol: epsilon and step relative to each image's range; "
            "TeCoA's: epsilon in 1/255 of the pixel scale)",
        },
    },
    "figures": {
        "adversarial_accuracy": {
            "function": "accuracy_figure",
            "inputs": ["metrics"],
            "caption": "Test accuracy against the PGD radius epsilon, one panel per protocol (THUNDER: a fraction of each "
            "image's intensity range; TeCoA: in 1/255), a line per model of the study's first dataset and backbone: mean "
            "over seeds; epsilon 0 is the attacked images unperturbed.",
        },
    },
}


def _attack_rows(metrics: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Accuracy rows of the study's attack conditions, with protocol and epsilon columns."""
    names = {attacks.condition(p, e): (p, e) for p, s in study["attacks"].items() for e in [0, *s["epsilons"]]}
    m = metrics[
        metrics["dataset"].isin(study["datasets"]) & metrics["backbone"].isin(study["backbones"]) & metrics["method"].isin(study["methods"])
        & metrics["condition"].isin(names) & (metrics["metric"] == "accuracy") & (metrics["group"] == "all")
    ]
    m = fill_unused_labels(m)
    return m.assign(protocol=[names[c][0] for c in m["condition"]], epsilon=[names[c][1] for c in m["condition"]])


def accuracy_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Rows: dataset x backbone x model; a column per protocol and radius (clean first), mean ± 95 % t-interval over seeds."""
    m = _attack_rows(metrics, study)
    if m.empty:
        return pd.DataFrame(), pd.DataFrame(), None
    runs = ["dataset", "backbone", "method", "fraction", "shots"]
    s = summarise(m, [*runs, "protocol", "epsilon"])
    s["column"] = [f"{p} {attacks.epsilon_label(study['attacks'][p], e)}" for p, e in zip(s["protocol"], s["epsilon"])]
    order = [f"{p} {attacks.epsilon_label(st, e)}" for p, st in study["attacks"].items() for e in [0, *st["epsilons"]]]
    means = s.pivot_table(index=runs, columns="column", values="mean", sort=False).reindex(columns=order)
    halves = s.pivot_table(index=runs, columns="column", values="ci95", sort=False, dropna=False).reindex(index=means.index, columns=order)
    numbers = method_order(means.reset_index(), methods)
    halves = halves.reindex(pd.MultiIndex.from_frame(numbers[runs]))
    pretty = numbers[["dataset", "backbone"]].copy()
    pretty["model"] = [model_label(methods, m_, f, k) for m_, f, k in zip(numbers["method"], numbers["fraction"], numbers["shots"])]
    for column in order:
        pretty[column] = [format_cell(v, c, "accuracy") for v, c in zip(numbers[column], halves[column].to_numpy())]
    return numbers, pretty, {c: c for c in order}


def accuracy_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    m = _attack_rows(pd.read_csv(inputs["metrics"]), study)
    m = m[(m["dataset"] == study["datasets"][0]) & (m["backbone"] == study["backbones"][0])]
    protocols = list(study["attacks"])
    fig, axes = plt.subplots(1, len(protocols), figsize=(3.4 * len(protocols), 2.8), squeeze=False, sharey=True)
    models = m.groupby(["method", "fraction", "shots"], sort=False).size().index
    for ax, protocol in zip(axes[0], protocols):
        for colour, (method, fraction, shots) in zip(PALETTE * 4, models):
            one = m[(m["protocol"] == protocol) & (m["method"] == method) & (m["fraction"] == fraction) & (m["shots"] == shots)]
            curve = one.groupby("epsilon")["value"].mean()
            ax.plot(curve.index, 100 * curve.to_numpy(), marker="o", ms=3, color=colour, label=model_label(methods, method, fraction, shots))
        unit = study["attacks"][protocol]["unit"]
        ax.set_title(protocol, fontsize=9)
        ax.set_xlabel("epsilon (" + ("x each image's range" if unit == "range" else "/255") + ")", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel("accuracy (%)", fontsize=8)
    if len(models):
        axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    save(fig, path)

