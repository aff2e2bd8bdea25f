"""MedMNIST-C robustness (beyond the seeds): the ``medmnistc`` suite (MedMNIST-C's PathMNIST
corruptions at their 5 severities and the HED stain shift) measured as MedMNIST-C summarises it
(error = 1 - balanced accuracy; BE and rBE relative to a reference backbone), and as THUNDER
measures embedding invariance (cosine between each image's clean and corrupted embedding).

How training on one suite carries over to the other is the CLIPath study's adapted-robustness
table (a method variant with ``train_conditions: <suite>``, beside the same method trained clean).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.conditions import MEDMNISTC_CORRUPTIONS, SEVERITY_LABEL, SUITE_CORRUPTIONS, SUITES, parse_condition
from medtune.figures import PALETTE, label, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import add_not_run_rows, format_cell, method_order, model_label, not_run, select

SPEC = {
    "label": "MedMNIST-C robustness",
    "conditions": ["medmnistc"],  # clean + 12 corruptions x 5 severities
    "tables": {
        "medmnistc_summary": {
            "function": "summary_table",
            "title": "MedMNIST-C summary: error (1 - balanced accuracy, %) clean and per corruption (mean over its "
            "severities), mean corrupted error, BE and rBE relative to the reference backbone (over MedMNIST-C's "
            "corruptions; the HED stain shift is shown apart)",
            "when": "corrupted",
        },
        "embedding_invariance": {
            "function": "invariance_table",
            "title": "Embedding invariance: mean cosine similarity between each test image's clean and corrupted "
            "embedding (the backbone's own feature), per condition",
            "when": "corrupted",
            "prompts": False,
        },
    },
    "figures": {
        "medmnistc_gallery": {
            "function": "gallery_figure",
            "inputs": ["images"],
            "caption": "One test image under every corruption of the medmnistc suite at its five severities: "
            "MedMNIST-C's PathMNIST set (Di Salvo et al. 2024), lengths scaled from its 224 px images to this "
            "one's side, and the HED stain shift (Tellez et al. 2018; alpha ~ N(1, sigma), beta ~ N(0, sigma) per "
            "stain). Random elements are drawn per image: a level grows the same marks, bubbles and stain shift.",
        },
        "embedding_invariance": {
            "function": "invariance_figure",
            "inputs": ["metrics"],
            "caption": "Embedding invariance (THUNDER): mean cosine similarity between each test image's clean and "
            "corrupted embedding against severity, one panel per corruption, a line per backbone (its own image "
            "feature, first dataset); 1 at severity 0, the clean image.",
            "when": "corrupted",
        },
    },
}
# BE and rBE average over MedMNIST-C's own corruptions, as its Evaluator does
OWN_CORRUPTIONS = tuple(c for c in MEDMNISTC_CORRUPTIONS if c != "hed_shift")


def reference_backbone(study: dict) -> str:
    return study.get("reference_backbone", study["backbones"][-1])


def summary_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """One row per dataset x backbone x model: error clean and per corruption, MedMNIST-C's BE
    (mean over corruptions of error / the reference's error) and rBE ((error - clean error) /
    (the reference's error - its clean error)), the reference being the same method on the
    reference backbone. rBE is blank where the reference loses nothing under a corruption."""
    corruptions = [c for c in MEDMNISTC_CORRUPTIONS if any(parse_condition(x)[0] == c for x in study["conditions"])]
    m = select(metrics, study, conditions=study["conditions"]).query("metric == 'balanced_accuracy'")
    if m.empty or not corruptions:
        return pd.DataFrame(), pd.DataFrame(), None
    m = m.assign(error=1 - m["value"], corruption=[parse_condition(c)[0] for c in m["condition"]])
    m = m[m["corruption"].isin(["clean", *corruptions])]
    # mean over seeds per condition, then over a corruption's severities
    runs = ["dataset", "backbone", "method", "fraction", "shots"]
    per_condition = m.groupby([*runs, "corruption", "condition"], as_index=False)["error"].mean()
    errors = per_condition.pivot_table(index=runs, columns="corruption", values="error")
    errors = errors.reindex(columns=["clean", *corruptions])
    own = [c for c in OWN_CORRUPTIONS if c in corruptions]
    has_reference = own and reference_backbone(study) in errors.index.get_level_values("backbone")
    reference = errors.xs(reference_backbone(study), level="backbone", drop_level=True) if has_reference else None
    numbers = errors.copy()
    numbers["mean_corrupted"] = errors[own].mean(axis=1) if own else np.nan
    numbers["be"] = numbers["rbe"] = np.nan
    if reference is not None and len(reference):
        ref = reference.reindex(errors.index.droplevel("backbone"))
        ref.index = errors.index
        numbers["be"] = (errors[own] / ref[own]).mean(axis=1)
        lost = ref[own].sub(ref["clean"], axis=0)
        numbers["rbe"] = (errors[own].sub(errors["clean"], axis=0) / lost.where(lost.abs() > 1e-12)).mean(axis=1)
    numbers = method_order(numbers.reset_index(), methods)
    pretty = numbers[["dataset", "backbone"]].copy()
    pretty["model"] = [model_label(methods, meth, f, k) for meth, f, k in zip(numbers["method"], numbers["fraction"], numbers["shots"])]
    for column in ["clean", *corruptions, "mean_corrupted"]:
        pretty[column.replace("_", " ")] = numbers[column].map(lambda v: format_cell(v, float("nan"), "accuracy"))
    for column in ("be", "rbe"):
        pretty[{"be": "BE", "rbe": "rBE"}[column]] = numbers[column].map(lambda v: "–" if np.isnan(v) else f"{v:.3f}")
    return (*add_not_run_rows(numbers, pretty, study, not_run(study), "model", lambda m: label(methods, m)), None)


def invariance_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """Rows: every corrupted condition of the study, then each suite's mean; a column per dataset x backbone."""
    m = _invariance(metrics, study)
    if m.empty:
        return pd.DataFrame(), pd.DataFrame(), None
    numbers = m.pivot_table(index="condition", columns=["dataset", "backbone"], values="value", aggfunc="mean")
    numbers = numbers.reindex([c for c in study["conditions"] if c in numbers.index])
    means = []
    for suite, names in SUITES.items():
        present = numbers.loc[numbers.index.isin(names)]
        if len(present):
            means.append(present.mean().rename(f"mean {suite}"))
    numbers = pd.concat([numbers, pd.DataFrame(means)])
    numbers.columns = [f"{d}/{b}" for d, b in numbers.columns]
    parsed = [parse_condition(c) if c in SEVERITY_LABEL else (c, None) for c in numbers.index]
    numbers.insert(0, "corruption", [c for c, _ in parsed])
    numbers.insert(1, "severity", [level for _, level in parsed])
    numbers = numbers.rename_axis("condition").reset_index()
    pretty = numbers.drop(columns="condition").copy()
    pretty["severity"] = pretty["severity"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    for col in pretty.columns[2:]:
        pretty[col] = numbers[col].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    return numbers, pretty, {c: c for c in numbers.columns[3:]}


def _invariance(metrics: pd.DataFrame, study: dict) -> pd.DataFrame:
    """cosine_to_clean rows of the study's zero-shot runs: the backbones' own embeddings."""
    if metrics.empty:
        return metrics
    return metrics[
        (metrics["method"] == "zeroshot")
        & (metrics["metric"] == "cosine_to_clean")
        & (metrics["group"] == "all")
        & metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"])
        & metrics["condition"].isin(study["conditions"])
    ]


def invariance_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    """Cosine to clean against severity, a panel per corruption, a line per backbone (first dataset)."""
    m = _invariance(pd.read_csv(inputs["metrics"]), study)
    m = m[m["dataset"] == study["datasets"][0]]
    corruptions = [c for suite in SUITE_CORRUPTIONS.values() for c in suite if any(parse_condition(x)[0] == c for x in study["conditions"])]
    columns = min(6, max(1, len(corruptions)))
    rows = -(-max(1, len(corruptions)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(corruptions) :]:
        ax.axis("off")
    for ax, corruption in zip(axes.flat, corruptions):
        for colour, backbone in zip(PALETTE, study["backbones"]):
            b = m[(m["backbone"] == backbone) & m["condition"].map(lambda x: parse_condition(x)[0] == corruption)]
            if b.empty:
                continue
            s = b.assign(severity=b["condition"].map(SEVERITY_LABEL)).groupby("severity")["value"].mean()
            s = pd.concat([s, pd.Series({0: 1.0})]).sort_index()  # the clean image is itself
            ax.plot(s.index, s.values, marker="o", ms=3, color=colour, label=backbone)
        ax.set_title(corruption.replace("_", " "), fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("cosine to clean", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("severity", fontsize=8)
    if corruptions:
        axes.flat[0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    save(fig, path)


def gallery(images: np.ndarray, index: int, path) -> None:
    """One image (rows: corruptions of the suite; columns: clean and severities 1..5)."""
    import torch

    from medtune.corrupt import apply_many

    x = torch.tensor(images[index : index + 1]).permute(0, 3, 1, 2)  # a copy of the read-only memory map
    names = ["clean", *SUITES["medmnistc"]]
    corrupted = dict(apply_many(x, names, keys=[index]))
    fig, axes = plt.subplots(len(MEDMNISTC_CORRUPTIONS), 6, figsize=(8.4, 1.45 * len(MEDMNISTC_CORRUPTIONS)), squeeze=False)
    for r, corruption in enumerate(MEDMNISTC_CORRUPTIONS):
        row = ["clean", *(n for n in names if parse_condition(n)[0] == corruption)]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            ax.imshow(corrupted[row[c]][0].permute(1, 2, 0).numpy())
            if c == 0:
                ax.set_title(corruption.replace("_", " ") + (": clean" if r == 0 else ""), fontsize=8, loc="left")
            elif r == 0:
                ax.set_title(f"severity {c}", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def gallery_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    gallery(np.load(inputs["images"], mmap_mode="r"), 0, path)
