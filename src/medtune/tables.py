"""Tables shaped like each seed's, pivoted from tidy metric rows.

Cells are mean ± half-width of the 95 % t-interval over seeds (no interval with
one seed). Every table is written as CSV (numbers) and Markdown (formatted cells).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from medtune.conditions import SEVERITY_LABEL, parse_condition
from medtune.io import read_json, write_csv, write_text

PERCENT_METRICS = {"accuracy", "precision", "recall", "f1", "top1", "top3", "ha@5", "ha@10", "p@5", "p@10"}
CLIPATH_METRICS = ["accuracy", "recall", "precision", "f1", "auc"]
METHOD_ORDER = ["zeroshot", "linear_probe", "linear_probe_augmented", "rfc", "rfc_augmented", "coop", "finetune_caption", "finetune_label"]


def collect_metrics(paths: Iterable[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_costs(paths: Iterable[str]) -> pd.DataFrame:
    rows = []
    for path in paths:
        parts = Path(path).parts
        dataset, method, backbone, seed, fraction = parts[-6:-1]
        record = read_json(path)
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "backbone": backbone,
                "seed": int(seed.removeprefix("seed")),
                "fraction": float(fraction.removeprefix("frac")),
                **{k: record[k] for k in ("wall_seconds", "device", "peak_memory_mb", "trainable_parameters", "images_seen", "n_train")},
            }
        )
    return pd.DataFrame(rows)


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    if len(v) == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


def summarise(frame: pd.DataFrame, keys: list[str], value: str = "value") -> pd.DataFrame:
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=False):
        mean, ci, n = mean_ci(group[value])
        rows.append((*(key if isinstance(key, tuple) else (key,)), mean, ci, n))
    return pd.DataFrame(rows, columns=[*keys, "mean", "ci95", "n"])


def format_cell(mean: float, ci: float, metric: str) -> str:
    if np.isnan(mean):
        return "–"
    scale, digits = (100, 1) if metric in PERCENT_METRICS else (1, 3)
    text = f"{mean * scale:.{digits}f}"
    return text if np.isnan(ci) else f"{text} ± {ci * scale:.{digits}f}"


def format_seconds(seconds: float) -> str:
    if np.isnan(seconds):
        return "–"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min {secs:.0f} s"
    return f"{minutes} min {secs:.1f} s" if minutes else f"{secs:.2f} s"


def _usage(fraction: float) -> str:
    return "zero-shot" if fraction == 0 else f"{fraction:g}%"


def _method_order(frame: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return frame.assign(_o=frame["method"].map(order).fillna(99)).sort_values(["_o", "fraction"]).drop(columns="_o")


def _select(metrics: pd.DataFrame, study: dict, conditions=("clean",), group="all") -> pd.DataFrame:
    m = metrics[
        metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"])
        & metrics["method"].str.split("+").str[0].isin(study["methods"])  # finetune_label+wise0.5 too
        & metrics["condition"].isin(conditions)
    ]
    m = m.assign(fraction=m["fraction"].fillna(0.0))  # zero-shot: no training data
    return m if group is None else m[m["group"] == group]


def clipath_accuracy(metrics: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows: dataset, backbone, method, data usage; columns: accuracy, recall, precision, F1, AUC."""
    m = _select(metrics, study)
    m = m[m["metric"].isin(CLIPATH_METRICS)]
    s = summarise(m, ["dataset", "backbone", "method", "fraction", "metric"])
    numbers = s.pivot_table(index=["dataset", "backbone", "method", "fraction"], columns="metric", values=["mean", "ci95"])
    numbers.columns = [f"{metric}_{stat}" for stat, metric in numbers.columns]
    numbers = _method_order(numbers.reset_index())
    pretty = numbers[["dataset", "backbone", "method"]].copy()
    pretty["data usage"] = numbers["fraction"].map(_usage)
    for metric in CLIPATH_METRICS:
        if f"{metric}_mean" in numbers:
            pretty[metric] = [format_cell(a, b, metric) for a, b in zip(numbers[f"{metric}_mean"], numbers[f"{metric}_ci95"])]
    return numbers, pretty


def clipath_cost(metrics: pd.DataFrame, costs: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CLIPath's complexity table: accuracy beside training time, per method and fraction."""
    acc = summarise(_select(metrics, study).query("metric == 'accuracy'"), ["dataset", "backbone", "method", "fraction"])
    acc = acc.rename(columns={"mean": "accuracy_mean", "ci95": "accuracy_ci95", "n": "n_seeds"})
    c = costs[costs["dataset"].isin(study["datasets"]) & costs["backbone"].isin(study["backbones"])] if len(costs) else costs
    if len(c):
        keys = ["dataset", "backbone", "method", "fraction"]
        time = summarise(c, keys, "wall_seconds").rename(columns={"mean": "train_seconds_mean", "ci95": "train_seconds_ci95"}).drop(columns="n")
        extra = c.groupby(keys, as_index=False)[["trainable_parameters", "images_seen", "peak_memory_mb", "n_train"]].mean()
        acc = acc.merge(time, on=keys, how="left").merge(extra, on=keys, how="left")
    numbers = _method_order(acc)
    pretty = numbers[["dataset", "backbone", "method"]].copy()
    pretty["data usage"] = numbers["fraction"].map(_usage)
    pretty["accuracy"] = [format_cell(a, b, "accuracy") for a, b in zip(numbers["accuracy_mean"], numbers["accuracy_ci95"])]
    if "train_seconds_mean" in numbers:
        pretty["training time"] = numbers["train_seconds_mean"].map(format_seconds)
        pretty["trainable parameters"] = numbers["trainable_parameters"].map(lambda v: "–" if pd.isna(v) else f"{int(v):,}")
    return numbers, pretty


def pubmedvision_topk(metrics: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-1 / top-3 overall ('all') and per group, one column pair per model."""
    m = _select(metrics, study, group=None)
    m = m[m["metric"].isin(["top1", "top3"])]
    s = summarise(m, ["dataset", "backbone", "method", "group", "metric"])
    numbers = s.pivot_table(index=["dataset", "group"], columns=["backbone", "method", "metric"], values="mean")
    numbers.columns = [f"{b}/{meth}/{metric}" for b, meth, metric in numbers.columns]
    numbers = numbers.reset_index()
    numbers = pd.concat([numbers[numbers["group"] == "all"], numbers[numbers["group"] != "all"]], ignore_index=True)
    pretty = numbers.copy()
    for col in numbers.columns[2:]:
        pretty[col] = numbers[col].map(lambda v: format_cell(v, float("nan"), "top1"))
    return numbers, pretty


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
    m = _select(metrics, {**study, "methods": ["zeroshot"]}, conditions=study["conditions"])
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


def pubmedvision_vs_paper(numbers: pd.DataFrame, paper: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    return out, pretty


def adapted_robustness(metrics: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Beyond the seeds: does adaptation buy or cost robustness? Accuracy of every method
    (at each training fraction) under every condition of the CLIPath study."""
    m = _select(metrics, study, conditions=study["conditions"]).query("metric == 'accuracy'")
    s = summarise(m, ["dataset", "backbone", "method", "fraction", "condition"])
    s["model"] = [f"{meth}" if f == 0 else f"{meth}@{f:g}%" for meth, f in zip(s["method"], s["fraction"])]
    numbers = s.pivot_table(index=["dataset", "backbone", "model"], columns="condition", values="mean", sort=False)
    numbers = numbers[[c for c in study["conditions"] if c in numbers.columns]].reset_index()
    pretty = numbers.copy()
    for col in numbers.columns[3:]:
        pretty[col] = numbers[col].map(lambda v: format_cell(v, float("nan"), "accuracy"))
    return numbers, pretty


def best_cells(numbers: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Boolean mask over the pretty table: the best (highest) value of each metric column,
    per dataset where the table has one, as the seeds mark them in bold."""
    mask = pd.DataFrame(False, index=numbers.index, columns=list(columns))
    groups = numbers.groupby("dataset").groups.values() if "dataset" in numbers else [numbers.index]
    for pretty_col, number_col in columns.items():
        if number_col not in numbers:
            continue
        for rows in groups:
            values = numbers.loc[rows, number_col]
            if values.notna().any():
                mask.loc[values.index[values == values.max()], pretty_col] = True
    return mask


def add_paper(numbers: pd.DataFrame, pretty: pd.DataFrame, paper: dict | None, keys: list[str], metrics: dict[str, str]):
    """Published numbers beside ours: a ``{metric} (paper)`` and a ``Δ {metric}`` column per metric.

    ``paper`` is a config block ``{columns: [...], rows: [[...], ...]}``; ``metrics``
    maps the paper's column to our numeric column.
    """
    if not paper:
        return numbers, pretty
    published = pd.DataFrame(paper["rows"], columns=paper["columns"])
    merged = numbers[keys].merge(published, on=keys, how="left")
    for paper_col, ours in metrics.items():
        if paper_col not in merged or ours not in numbers:
            continue
        theirs = merged[paper_col].to_numpy(dtype=float)
        numbers[f"{paper_col}_paper"] = theirs
        unit = "accuracy" if paper_col in PERCENT_METRICS else "auc"
        pretty[f"{paper_col} (paper)"] = [format_cell(v, float("nan"), unit) for v in theirs]
        pretty[f"Δ {paper_col}"] = [format_cell(v, float("nan"), unit) for v in numbers[ours].to_numpy() - theirs]
    return numbers, pretty


def to_latex(pretty: pd.DataFrame, bold: pd.DataFrame | None, caption: str) -> str:
    styler = pretty.style.hide(axis="index").format(escape="latex")
    if bold is not None and len(bold.columns):
        styler = styler.apply(lambda _: bold.reindex(columns=pretty.columns, fill_value=False).replace({True: "font-weight: bold", False: ""}), axis=None)
    return styler.to_latex(hrules=True, caption=caption.replace("%", r"\%"), convert_css=True, column_format="l" * len(pretty.columns))


def write_table(numbers: pd.DataFrame, pretty: pd.DataFrame, folder, name: str, title: str, best: dict | None = None) -> None:
    """CSV (numbers), Markdown and LaTeX (booktabs; best value per column in bold)."""
    write_csv(numbers, Path(folder) / f"{name}.csv")
    bold = best_cells(numbers, best) if best and len(numbers) else None
    shown = pretty.copy()
    if bold is not None:
        for col in bold.columns:
            shown[col] = [f"**{v}**" if b else v for v, b in zip(shown[col], bold[col])]
    body = shown.to_markdown(index=False) if len(pretty) else "_no rows: the study produced no metrics_"
    write_text(f"### {title}\n\n{body}\n", Path(folder) / f"{name}.md")
    write_text(to_latex(pretty, bold, title) if len(pretty) else f"% {title}: no rows\n", Path(folder) / f"{name}.tex")


def write_study_tables(metrics: pd.DataFrame, costs: pd.DataFrame, studies: dict, folder) -> list[str]:
    written = []
    if "clipath" in studies:
        study = studies["clipath"]
        paper = study.get("paper", {})
        numbers, pretty = clipath_accuracy(metrics, study)
        numbers, pretty = add_paper(numbers, pretty, paper.get("clipath_accuracy"), ["dataset", "method", "fraction"], {m: f"{m}_mean" for m in CLIPATH_METRICS})
        write_table(numbers, pretty, folder, "clipath_accuracy", "CLIPath: test metrics by share of training data", {m: f"{m}_mean" for m in CLIPATH_METRICS})
        numbers, pretty = clipath_cost(metrics, costs, study)
        numbers, pretty = add_paper(numbers, pretty, paper.get("clipath_cost"), ["dataset", "method", "fraction"], {"accuracy": "accuracy_mean"})
        write_table(numbers, pretty, folder, "clipath_cost", "CLIPath: accuracy and training cost", {"accuracy": "accuracy_mean"})
        written += ["clipath_accuracy", "clipath_cost"]
        if studies["clipath"]["conditions"] != ["clean"]:
            write_table(*adapted_robustness(metrics, studies["clipath"]), folder, "adapted_robustness", "Beyond the seeds: test accuracy of adapted models under corruptions")
            written.append("adapted_robustness")
    if "pubmedvision" in studies:
        numbers, pretty = pubmedvision_topk(metrics, studies["pubmedvision"])
        write_table(numbers, pretty, folder, "pubmedvision_topk", "PubMedVision-style top-1 / top-3 accuracy per group", {c: c for c in numbers.columns[2:]})
        paper = studies["pubmedvision"].get("paper", {}).get("pubmedvision_topk")
        if paper:
            write_table(*pubmedvision_vs_paper(numbers, paper), folder, "pubmedvision_paper", "PubMedVision: overall top-1 / top-3, ours vs published")
            written.append("pubmedvision_paper")
        written.append("pubmedvision_topk")
    if "pathclip" in studies:
        study = studies["pathclip"]
        for name, names, title in (
            ("pathclip_zeroshot", ["accuracy", "f1"], "PathCLIP Table 1: zero-shot accuracy and F1 per corruption and severity"),
            ("pathclip_retrieval", ["ha@5", "ha@10"], "PathCLIP Table 2: image-image retrieval HA@5 / HA@10 per corruption and severity"),
        ):
            numbers, pretty = pathclip_table(metrics, study, names, study.get("paper", {}).get(name))
            write_table(numbers, pretty, folder, name, title, {c: c for c in numbers.columns[3:] if "(paper)" not in c})
        written += ["pathclip_zeroshot", "pathclip_retrieval"]
    return written

