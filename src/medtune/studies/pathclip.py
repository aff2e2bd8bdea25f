"""PathCLIP robustness benchmark (seed 002): zero-shot accuracy / F1 (Table 1) and
image–image retrieval HA@5 / HA@10 (Table 2) of several backbones under 7 corruptions
x 4 severities; the corruption gallery (Fig. 1) and severity curves (Fig. 4/5)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtune.conditions import CORRUPTIONS, SEVERITY_LABEL, parse_condition
from medtune.figures import PALETTE, save
import matplotlib.pyplot as plt  # noqa: E402  (after medtune.figures chose the Agg backend)
from medtune.tables import add_not_run_columns, not_run, select, summarise

SPEC = {
    "label": "PathCLIP robustness",
    "conditions": ["pathclip"],  # clean + 7 corruptions x 4 severities
    "tables": {
        "pathclip_zeroshot": {
            "function": "zeroshot_table",
            "title": "PathCLIP Table 1: zero-shot accuracy and F1 per corruption and severity",
        },
        "pathclip_retrieval": {
            "function": "retrieval_table",
            "title": "PathCLIP Table 2: image-image retrieval HA@5 / HA@10 per corruption and severity",
            "prompts": False,  # the backbones' own image embeddings
        },
    },
    "figures": {
        "pathclip_robustness": {
            "function": "robustness_figure",
            "inputs": ["metrics"],
            "caption": "Zero-shot accuracy and image-image retrieval HA@5 of each backbone against corruption severity "
            "(seed 002, Fig. 4/5): one panel per corruption, severity 0 is the clean image (\"Origin\"); colour "
            "levels run −2…+2 (factors 0.4, 0.8, 1.2, 1.6), the others 1…4.",
        },
        "corruption_gallery": {
            "function": "gallery_figure",
            "inputs": ["images"],
            "caption": "One test image under every corruption and severity level (seed 002, Fig. 1). Definitions of hue "
            "and markup are this pipeline's (docs/robustness.md): hue shift = (factor − 1)/4 turns; markup = that many "
            "seeded pen strokes.",
        },
        "retrieval_examples": {
            "function": "retrieval_figure",
            "inputs": ["test_features", "images", "samples"],
            "caption": "Image-image retrieval with the first backbone of the robustness study: each row is a query "
            "(left) and its five nearest test images by cosine similarity, the query excluded; a green frame marks a "
            "neighbour of the query's class, a red frame another class.",
        },
    },
}


def condition_columns(conditions: pd.Series) -> pd.DataFrame:
    """The seed's row labels: corruption name ('Origin' for clean) and severity level."""
    parsed = [parse_condition(c) for c in conditions]
    return pd.DataFrame(
        {
            "corruption": ["Origin" if c == "clean" else c.capitalize() for c, _ in parsed],
            "severity": [SEVERITY_LABEL[c] for c in conditions],
        }
    )


def pathclip_table(metrics: pd.DataFrame, study: dict, metric_names: list[str], paper: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed 002 Tables 1 and 2: one row per condition, a column per dataset x backbone x metric;
    published values, when the config carries them, as ``{dataset}/{backbone} (paper)/{metric}`` columns."""
    m = select(metrics, {**study, "methods": ["zeroshot"]}, conditions=study["conditions"])
    m = m[m["metric"].isin(metric_names)]
    s = summarise(m, ["condition", "dataset", "backbone", "metric"])
    if paper:
        published = pd.DataFrame(paper["rows"], columns=paper["columns"])
        published = published[published["metric"].isin(metric_names) & published["condition"].isin(study["conditions"])]
        s = pd.concat([s, published.assign(backbone=published["backbone"] + " (paper)", mean=published["value"])[s.columns.drop(["ci95", "n"])]])
    numbers = s.pivot_table(index="condition", columns=["dataset", "backbone", "metric"], values="mean")
    numbers = numbers.reindex([c for c in study["conditions"] if c in numbers.index])
    # the seed's column order: HA@5 before HA@10, accuracy before F1
    numbers = numbers[sorted(numbers.columns, key=lambda c: (c[0], c[1], metric_names.index(c[2])))]
    numbers.columns = [f"{d}/{b}/{metric}" for d, b, metric in numbers.columns]
    numbers = pd.concat([condition_columns(numbers.index), numbers.reset_index()], axis=1)
    pretty = numbers.drop(columns="condition")
    for col in pretty.columns[2:]:
        pretty[col] = pretty[col].map(lambda v: "–" if np.isnan(v) else f"{v:.3f}")
    return numbers, pretty


def zeroshot_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    return _table(metrics, study, "pathclip_zeroshot", ["accuracy", "f1"])


def retrieval_table(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict, methods: dict):
    """A backbone without a text tower has its retrieval columns: they need its image embedding alone."""
    return _table(metrics, study, "pathclip_retrieval", ["ha@5", "ha@10"], embedding=True)


def _table(metrics: pd.DataFrame, study: dict, name: str, metric_names: list[str], embedding: bool = False):
    numbers, pretty = pathclip_table(metrics, study, metric_names, study.get("paper", {}).get(name))
    best = {c: c for c in numbers.columns[3:] if "(paper)" not in c}
    if len(numbers):
        skips = [s for s in not_run(study, embedding) if s["method"] == "zeroshot"]
        numbers, pretty = add_not_run_columns(numbers, pretty, study, skips, metric_names, lambda d, b, m, metric: f"{d}/{b}/{metric}")
    return numbers, pretty, best


def robustness_figure(inputs: dict, study: dict, methods: dict, path, metric_names=("accuracy", "ha@5")) -> None:
    """Seed 002 Fig. 4/5: metric vs severity, one panel per corruption, a line per backbone (zero-shot)."""

    metrics = pd.read_csv(inputs["metrics"])
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


def gallery(images: np.ndarray, index: int, conditions, path) -> None:
    """Seed 002 Fig. 1: one image under every corruption (rows) and severity (columns)."""
    import torch

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


def gallery_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    gallery(np.load(inputs["images"], mmap_mode="r"), 0, study["conditions"], path)


def retrieval_examples(images: np.ndarray, indices: np.ndarray, labels: np.ndarray, features: np.ndarray, path, k: int = 5, n_queries: int = 4) -> None:
    """Queries (left) and their top-k neighbours by cosine similarity; a green frame marks the query's class, red another."""
    feats = features / np.linalg.norm(features, axis=1, keepdims=True)
    queries = np.linspace(0, len(feats) - 1, n_queries).astype(int)
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(1.5 * (k + 1), 1.6 * n_queries), squeeze=False)
    for row, q in enumerate(queries):
        sims = feats @ feats[q]
        sims[q] = -np.inf  # the query is not its own candidate
        top = np.argsort(-sims, kind="stable")[: min(k, len(feats) - 1)]  # a small test split has fewer candidates
        for ax in axes[row][len(top) + 1 :]:
            ax.axis("off")
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


def retrieval_figure(inputs: dict, study: dict, methods: dict, path) -> None:
    from pathlib import Path

    from medtune.data.store import read_samples

    test = read_samples(inputs["samples"]).query("split == 'test'")
    features = np.load(Path(inputs["test_features"]) / "clean.npy")
    images = np.load(inputs["images"], mmap_mode="r")
    retrieval_examples(images, test["index"].to_numpy(), test["label"].to_numpy(), features, path)
