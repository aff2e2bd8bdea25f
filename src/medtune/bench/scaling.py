"""Figure 5, scaling: training seconds per run vs training fraction, from each run's ``train.json``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from medtune.bench.figure import Figure
from medtune.bench.snakemake_logs import read_benchmarks


RUN_LABELS = ("dataset", "method", "backbone", "seed", "fraction")  # top-level keys of every run's train.json


def read_train_records(runs_root: Path) -> tuple[list[dict[str, Any]], int]:
    """One row per ``train.json`` under ``runs_root``: its run labels, fit seconds and training set size.

    The labels are read from the file's contents, never from its path. A file without them (or
    without ``wall_seconds``, or unreadable) is counted in the second value and left out.
    """
    rows, skipped = [], 0
    for path in sorted(runs_root.rglob("train.json")) if runs_root.exists() else []:
        try:
            record = json.loads(path.read_text())
            rows.append({"dataset": str(record["dataset"]), "method": str(record["method"]),
                         "backbone": str(record["backbone"]), "seed": int(record["seed"]),
                         "fraction": float(record["fraction"]), "s": float(record["wall_seconds"]),
                         "n_train": record.get("n_train")})
        except (OSError, ValueError, KeyError, TypeError):
            skipped += 1
    return rows, skipped


def bench_scaling(results: Path) -> dict[str, Any]:
    """Mean training seconds per run by (dataset, backbone, method, fraction), with training set sizes.

    A run's time is the fit's wall time from its ``train.json``: a frozen-backbone job fits
    every fraction of a seed, so its Snakemake benchmark covers them all (reported alongside).
    """
    import pandas as pd

    rows, skipped = read_train_records(results / "runs")
    if not rows:
        return {"rows": [], "summary": [], "jobs": {}, "skipped_records": skipped}
    table = pd.DataFrame(rows)
    grouped = (table.groupby(["dataset", "backbone", "method", "fraction"])
               .agg(s=("s", "mean"), n_train=("n_train", "mean"), seeds=("seed", "nunique")).reset_index())
    jobs = read_benchmarks(results / "benchmarks" / "train")
    per_job = {}
    for (dataset, backbone, method), g in grouped.groupby(["dataset", "backbone", "method"]):
        mine = jobs[jobs["path"].str.startswith(f"{dataset}/{method}/{backbone}/seed")] if not jobs.empty else jobs
        if len(mine):
            per_job[method] = {"jobs": int(len(mine)), "mean_s": float(mine["s"].mean())}
    summary = []
    for (dataset, backbone, method), g in grouped.groupby(["dataset", "backbone", "method"]):
        g = g.sort_values("fraction")
        lo, hi = g.iloc[0], g.iloc[-1]
        if len(g) < 2:
            continue
        images = hi["n_train"] / lo["n_train"] if lo["n_train"] and hi["n_train"] else hi["fraction"] / lo["fraction"]
        summary.append({"dataset": dataset, "backbone": backbone, "method": method, "low": float(lo["fraction"]),
                        "high": float(hi["fraction"]), "s_low": float(lo["s"]), "s_high": float(hi["s"]),
                        "time_ratio": float(hi["s"] / lo["s"]), "images_ratio": float(images)})
    return {"rows": grouped.to_dict("records"), "summary": summary, "jobs": per_job, "skipped_records": skipped}


def plot_scaling(r: dict[str, Any], out: Path) -> Path | None:
    if not r["rows"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame(r["rows"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, backbone, method), g in table.groupby(["dataset", "backbone", "method"]):
        g = g.sort_values("fraction")
        ax.plot(g["fraction"], g["s"], marker="o", label=f"{method} ({backbone}, {dataset})")
    ax.set_xscale("log")
    ax.set_xlabel("training fraction (%)")
    ax.set_ylabel("seconds per training run (mean over seeds)")
    ax.set_ylim(bottom=0)
    ax.set_title("Training time vs fraction (train.json of each run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def scaling_figure(r: dict[str, Any], plot: Path | None) -> Figure:
    name = "scaling, training time per run vs fraction"
    skipped = r.get("skipped_records", 0)
    left_out = [f"{skipped} train.json without the run labels ({', '.join(RUN_LABELS)}) or wall_seconds left out"] \
        if skipped else []
    if not r["summary"]:
        return Figure("scaling", name, None, "no train.json records under results/runs (run `make run` first)", left_out,
                      {"result": r})
    details = left_out + [f"{s['method']}: {s['s_low']:.2f} s at {s['low']:g}% -> {s['s_high']:.2f} s at {s['high']:g}%, "
               f"time x{s['time_ratio']:.1f} for x{s['images_ratio']:.0f} the images" for s in r["summary"]]
    details.append("a run's time is its fit (wall_seconds in train.json); one Snakemake job fits every fraction of a seed: "
                   + ", ".join(f"{m} {v['mean_s']:.1f} s a job ({v['jobs']} jobs)" for m, v in r.get("jobs", {}).items()))
    if plot is not None:
        with contextlib.suppress(ValueError):
            plot = plot.relative_to(Path.cwd())
        details.append(f"plot: {plot}")
    worst = max(s["time_ratio"] / s["images_ratio"] for s in r["summary"])
    shown = "time x" + "/".join(f"{s['time_ratio']:.1f}" for s in r["summary"]) + " (" + "/".join(s["method"] for s in r["summary"]) \
        + f") for x{r['summary'][0]['images_ratio']:.0f} the images"
    return Figure("scaling", name, worst, shown, details, {"result": r})
