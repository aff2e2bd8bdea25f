"""Tables pivoted from tidy metric rows, and how every table is written.

Cells are mean ± half-width of the 95 % t-interval over seeds (no interval with
one seed). Every table is written as CSV (numbers), Markdown and LaTeX. Which
tables a study makes, and their shapes, live in its module (:mod:`medtune.studies`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from medtune.io import read_json, write_csv, write_json, write_text
from medtune.jobs import report
from medtune.records import read_runs

PERCENT_METRICS = {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "top1", "top3", "ha@5", "ha@10", "p@5", "p@10"}
COST_COLUMNS = ("wall_seconds", "device", "peak_memory_mb", "trainable_parameters", "images_seen", "n_train")
LABEL_COLUMNS = ("dataset", "method", "backbone", "seed", "fraction", "shots")


def collect_metrics(outputs: Iterable[str]) -> pd.DataFrame:
    """Every run's metric rows, from the run manifests of the jobs' outputs."""
    frames = [pd.read_csv(run["files"]["metrics"], keep_default_na=False, na_values=[""]) for run in read_runs(outputs)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_costs(outputs: Iterable[str]) -> pd.DataFrame:
    """One row per trained run: its labels and the cost its ``train.json`` records."""
    rows = []
    for run in read_runs(outputs):
        if "record" in run["files"]:
            record = read_json(run["files"]["record"])
            rows.append({**{k: record.get(k) for k in LABEL_COLUMNS}, **{k: record[k] for k in COST_COLUMNS}})
    return pd.DataFrame(rows, columns=[*LABEL_COLUMNS, *COST_COLUMNS])


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    if len(v) == 1:
        return float(v[0]), float("nan"), 1
    from scipy import stats  # a second and a half to import: not in collect_metrics, which never needs it

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


def usage(fraction: float, shots: float = 0) -> str:
    """How much training data a row used: ``16-shot``, ``5%`` or ``zero-shot`` (0 for "not used",
    as :func:`select` fills them)."""
    if shots and shots > 0:
        return f"{int(shots)}-shot"
    return "zero-shot" if fraction == 0 else f"{fraction:g}%"


def model_label(methods: dict[str, dict[str, Any]], method: str, fraction: float, shots: int) -> str:
    """A run's method and data usage as a table row names it: ``linear probe @ 50%``, ``zero-shot``."""
    from medtune.figures import label

    return label(methods, method) + ("" if fraction == 0 and shots == 0 else f" @ {usage(fraction, shots)}")


def in_study(run: dict[str, Any], study: dict) -> bool:
    """Whether a run (a manifest entry's labels) is one of the study's: its dataset, backbone, method,
    and for a trained run one of its seeds and fractions or shot counts."""
    if run["dataset"] not in study["datasets"] or run["backbone"] not in study["backbones"] or run["method"] not in study["methods"]:
        return False
    if run.get("seed") is None:
        return True
    usage_ok = run.get("shots") in study.get("shots", []) if run.get("shots") is not None else any(
        float(run["fraction"]) == float(f) for f in study.get("fractions", []))
    return run["seed"] in study.get("seeds", [run["seed"]]) and usage_ok


def registered_methods() -> dict[str, dict[str, Any]]:
    """Label and order of every registered method: what a table shows when the caller passes none."""
    from medtune import methods

    return {name: {"label": m.label, "order": m.order} for name, m in methods.registered().items()}


def method_order(frame: pd.DataFrame, methods: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows in the methods' declared order (a WiSE-FT mix right after its method), then by
    fraction and shot count (shot rows, whose fraction is 0, before the fractions)."""
    base = frame["method"].str.split("+").str[0]
    order = base.map({name: m["order"] for name, m in methods.items()}).fillna(float("inf"))
    keys = ["_o", "_m", "fraction"] + (["shots"] if "shots" in frame else [])
    return frame.assign(_o=order, _m=frame["method"]).sort_values(keys).drop(columns=["_o", "_m"])


def fill_unused_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``fraction`` and ``shots`` set to 0 where they do not apply (zero-shot: no training data;
    a shot run: no fraction; a fraction run: no shots), so grouping and pivoting keep every row."""
    shots = pd.to_numeric(frame["shots"]) if "shots" in frame else pd.Series(float("nan"), index=frame.index)
    return frame.assign(fraction=frame["fraction"].fillna(0.0), shots=shots.fillna(0).astype(int))


def of_study(methods: pd.Series, study: dict) -> pd.Series:
    """Whether each method (of a metric row, a cost row, a run) is the study's: one of its methods, a
    WiSE-FT mix of one (``finetune_label+wise0.5``), or a stage's run on one (``linear_probe+transclip``)
    where the study runs that stage, not another study (``study["other_stage_runs"]``, set by
    :func:`medtune.plan.validate`)."""
    methods = pd.Series(methods, dtype=object)
    return methods.str.split("+").str[0].isin(study["methods"]) & ~methods.isin(study.get("other_stage_runs", []))


def select(metrics: pd.DataFrame, study: dict, conditions=("clean",), group="all") -> pd.DataFrame:
    m = metrics[
        metrics["dataset"].isin(study["datasets"])
        & metrics["backbone"].isin(study["backbones"])
        & of_study(metrics["method"], study)
        & metrics["condition"].isin(conditions)
    ]
    m = fill_unused_labels(m)
    return m if group is None else m[m["group"] == group]


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


NOT_RUN = "—"


def not_run(study: dict, embedding: bool = False) -> list[dict]:
    """The study's (method, backbone) pairs the plan left out (:func:`medtune.plan.Skip.record`).
    For a table of image embeddings (``embedding``: retrieval, invariance) a method without
    training did run on every backbone: only the other pairs are missing there."""
    return [s for s in study.get("skipped", []) if not (embedding and s["embedding_only"])]


def not_run_note(skips: list[dict]) -> str:
    return f"{NOT_RUN} not run: " + "; ".join(s["reason"] for s in skips) + "."


def add_note(pretty: pd.DataFrame, note: str) -> pd.DataFrame:
    pretty.attrs["notes"] = [*pretty.attrs.get("notes", []), note]
    return pretty


def add_not_run_rows(numbers: pd.DataFrame, pretty: pd.DataFrame, study: dict, skips: list[dict], key: str = "method", name=None):
    """A row per dataset x skipped (method, backbone) pair, "—" in every cell but its labels, and
    the reason under the table; for tables with a row per ``backbone`` and method (the ``key``
    column shows it, as ``name(method)``: by default its name). ``numbers`` gets the same rows, NaN,
    with the reason in a ``not_run`` column."""
    if not skips or key not in pretty or "backbone" not in pretty:
        return numbers, pretty
    present = set(zip(numbers["backbone"], numbers["method"])) if {"backbone", "method"} <= set(numbers.columns) else set()
    extra_numbers, extra_pretty = [], []
    # a row per dataset where the table has a dataset column, else one
    for dataset in study["datasets"] if "dataset" in pretty else [None]:
        where = {} if dataset is None else {"dataset": dataset}
        for skip in skips:
            if (skip["backbone"], skip["method"]) in present:
                continue
            shown = name(skip["method"]) if name else skip["method"]
            extra_numbers.append({**where, "backbone": skip["backbone"], "method": skip["method"], "not_run": skip["reason"]})
            extra_pretty.append({**{c: NOT_RUN for c in pretty.columns}, **where, "backbone": skip["backbone"], key: shown})
    if not extra_pretty:
        return numbers, pretty
    notes = pretty.attrs.get("notes", [])
    numbers = pd.concat([numbers, pd.DataFrame(extra_numbers)], ignore_index=True)
    pretty = pd.concat([pretty, pd.DataFrame(extra_pretty, columns=pretty.columns)], ignore_index=True)
    pretty.attrs["notes"] = notes
    return numbers, add_note(pretty, not_run_note(skips))


def add_not_run_columns(numbers: pd.DataFrame, pretty: pd.DataFrame, study: dict, skips: list[dict], metric_names, column):
    """A "—" column for each skipped pair's metrics, in a table with a column per dataset, backbone,
    method and metric (``column(dataset, backbone, method, metric)`` names it), and the reason
    under the table; NaN in ``numbers``."""
    added = False
    for dataset in study["datasets"]:
        for skip in skips:
            for metric in metric_names:
                name = column(dataset, skip["backbone"], skip["method"], metric)
                if name not in pretty:
                    numbers[name], pretty[name], added = float("nan"), NOT_RUN, True
    return numbers, add_note(pretty, not_run_note(skips)) if added else pretty


def write_table(numbers: pd.DataFrame, pretty: pd.DataFrame, folder, name: str, title: str, best: dict | None = None,
                card: dict | None = None) -> None:
    """CSV (numbers), Markdown and LaTeX (booktabs; best value per column in bold), and the
    table's protocol card (:mod:`medtune.protocol`) as ``{name}.card.json`` and under the Markdown.

    Lines in ``pretty.attrs["notes"]`` (a legend of markers) go under the Markdown table
    and into the LaTeX caption."""
    from medtune.protocol import markdown

    write_csv(numbers, Path(folder) / f"{name}.csv")
    bold = best_cells(numbers, best) if best and len(numbers) else None
    shown = pretty.copy()
    if bold is not None:
        for col in bold.columns.intersection(shown.columns):
            shown[col] = [f"**{v}**" if b else v for v, b in zip(shown[col], bold[col])]
    body = shown.to_markdown(index=False) if len(pretty) else "_no rows: the study produced no metrics_"
    notes = pretty.attrs.get("notes", []) if len(pretty) else []
    legend = "".join(f"\n{line}\n" for line in notes)
    protocol = f"\n{markdown(card)}" if card else ""
    write_text(f"### {title}\n\n{body}\n{legend}{protocol}", Path(folder) / f"{name}.md")
    if card:
        write_json(card, Path(folder) / f"{name}.card.json")
    caption = f"{title}. {' '.join(notes)}" if notes else title
    write_text(to_latex(pretty, bold, caption) if len(pretty) else f"% {title}: no rows\n", Path(folder) / f"{name}.tex")
    report(f"table {name} written")


def write_study_tables(
    metrics: pd.DataFrame, costs: pd.DataFrame, studies: dict, folder, methods: dict | None = None, run_outputs: Iterable[str] = (),
    index_files: Iterable[str] = (), cards: dict | None = None, encodings: Iterable[str] = (),
) -> list[str]:
    """Every table each configured study declares (and its config asks for). A table that
    declares ``inputs: [runs]`` also gets the runs of ``run_outputs`` (the jobs' manifests), and
    one that declares ``robustness_index`` the records of ``index_files``.
    A table with a row per ``method`` and ``backbone`` shows the pairs the plan left out as "—"
    (the others place them themselves: :func:`add_not_run_rows`, :func:`add_not_run_columns`).

    ``cards`` (:func:`medtune.protocol.plan_cards`), completed from the test features'
    encoding records in the folders ``encodings`` and the runs' records, are written beside
    the tables; without them no card is written."""
    from medtune import studies as registry
    from medtune.protocol import ENCODE_RECORD, measured, software

    methods = methods or registered_methods()
    runs = read_runs(run_outputs)
    available = {"runs": runs, "robustness_index": [read_json(p) for p in index_files]}
    # features encoded before medtune wrote encode.json have none: their card says so
    records = [read_json(Path(f) / ENCODE_RECORD) for f in encodings if (Path(f) / ENCODE_RECORD).is_file()]
    by_pair = {(r["dataset"], r["backbone"]): r for r in records}
    environment = software() if cards else None
    written = []
    for name, study in studies.items():
        module = registry.registered()[name].load()
        for table in registry.tables(name, study):
            extra = {key: available[key] for key in table.inputs}
            numbers, pretty, best = getattr(module, table.function)(metrics, costs, study, methods, **extra)
            numbers, pretty = add_not_run_rows(numbers, pretty, study, not_run(study, embedding=not table.prompts))
            card = {**measured(cards[table.name], by_pair, runs), "software": environment} if cards else None
            write_table(numbers, pretty, folder, table.name, table.title, best, card)
            written.append(table.name)
    return written
