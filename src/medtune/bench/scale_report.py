"""What the scale rehearsal (:mod:`.scale`) measured: per job, per stage, cost against size, and its goals.

Every job is read from Snakemake's own log of the run (rule, wildcards, outputs, log and
benchmark files of each job that finished), its benchmark file (wall seconds, sampled RSS) and
the usage line :mod:`medtune.jobs` writes in its log (CPU seconds and the kernel's peak RSS,
which a 30-second sample can miss). A stage is a rule, split by the split it encodes or the
method it trains. Cost against size is the least-squares slope of log(seconds) on log(images).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medtune.bench.scale import PCAM_SIZES, parse_jobs

RSS_LIMIT_MB = 4000.0
SLOPE_LIMIT, RETRIEVAL_SLOPE_LIMIT = 1.1, 2.05
STAGE_WILDCARD = {"encode_images": "split", "train_frozen": "trained"}  # rules split into one stage per value
# methods that score every test image against every training image: cost grows with test x train,
# judged like retrieval (test x test)
NEIGHBOUR_METHODS = ("knn",)
FULL_IMAGES = sum(PCAM_SIZES.values())


def wildcards(job: dict[str, str]) -> dict[str, str]:
    text = job.get("wildcards", "")
    return dict(part.split("=", 1) for part in text.split(", ") if "=" in part)


def stage_of(job: dict[str, str]) -> str:
    key = STAGE_WILDCARD.get(job["rule"])
    return f"{job['rule']} {wildcards(job)[key]}" if key else job["rule"]


def method_of(job: dict[str, str]) -> str | None:
    """The method whose runs a job evaluates (zero-shot, or a trained method's seed job)."""
    if job["rule"] == "zeroshot":
        return "zeroshot"
    return wildcards(job).get("trained")


def disk_mb(paths: list[Path]) -> float:
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total / 2**20


def finished_jobs(logs: list[Path]) -> list[dict[str, str]]:
    """The jobs that finished, over Snakemake's logs of one scale (a killed run, then its resumption)."""
    jobs = []
    for log in logs:
        if log.exists():
            started, finished = parse_jobs(log.read_text(errors="replace"))
            jobs += [started[i] for i in finished if i in started]
    return jobs


def collect_scale(repo: Path, workdir: Path) -> dict[str, Any]:
    """Per job of the run in ``workdir``: stage, wall and CPU seconds, peak RSS, disk of its outputs."""
    import pandas as pd

    from medtune.jobs import read_usage

    records = []
    for job in finished_jobs([workdir / "snakemake-killed.log", workdir / "snakemake.log"]):
        if "benchmark" not in job:
            continue  # the `all` target
        bench = pd.read_csv(workdir / job["benchmark"], sep="\t").iloc[-1]
        usage = read_usage(workdir / job["log"]) or {}
        sampled = float(bench["max_rss"]) if pd.notna(bench.get("max_rss")) else 0.0
        records.append({
            "stage": stage_of(job),
            "method": method_of(job),
            "job": job.get("wildcards", job["rule"]),
            "wall_s": float(bench["s"]),
            "cpu_s": usage.get("cpu_s"),
            "peak_rss_mb": max(sampled, usage.get("peak_rss_mb") or 0.0, usage.get("children_peak_rss_mb") or 0.0),
            "benchmark_max_rss_mb": sampled,
            "disk_mb": round(disk_mb([workdir / p for p in job.get("output", "").split(", ") if p]), 3),
        })
    metrics = workdir / "results" / "metrics.csv"
    retrieval = []
    if metrics.exists():
        table = pd.read_csv(metrics, usecols=["method", "metric"])
        retrieval = sorted(table.loc[table["metric"] == "ha@5", "method"].unique().tolist())
    return {"jobs": records, "retrieval_methods": retrieval}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two sizes."""
    points = [(x, y) for x, y in points if x > 0 and y and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    lx, ly = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def stage_table(scales: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: its cost at each scale, its slopes, whether it evaluates retrieval."""
    stages: dict[str, dict[str, Any]] = {}
    for label, run in sorted(scales.items(), key=lambda kv: kv[1]["images"]):
        for job in run["jobs"]:
            stage = stages.setdefault(job["stage"], {"retrieval": False, "neighbours": False, "by_scale": {}})
            stage["retrieval"] |= job["method"] in run.get("retrieval_methods", [])
            stage["neighbours"] |= job["method"] in NEIGHBOUR_METHODS
            cell = stage["by_scale"].setdefault(label, {"images": run["images"], "jobs": 0, "wall_s": 0.0, "cpu_s": 0.0,
                                                        "peak_rss_mb": 0.0, "disk_mb": 0.0})
            cell["jobs"] += 1
            cell["wall_s"] += job["wall_s"]
            cell["cpu_s"] += job["cpu_s"] or 0.0
            cell["peak_rss_mb"] = max(cell["peak_rss_mb"], job["peak_rss_mb"])
            cell["disk_mb"] += job["disk_mb"]
    for stage in stages.values():
        cells = list(stage["by_scale"].values())
        stage["slope_wall"] = slope([(c["images"], c["wall_s"]) for c in cells])
        stage["slope_cpu"] = slope([(c["images"], c["cpu_s"]) for c in cells])
        stage["slope_limit"] = RETRIEVAL_SLOPE_LIMIT if stage["retrieval"] or stage["neighbours"] else SLOPE_LIMIT
        largest = max(cells, key=lambda c: c["images"])
        measured = largest["images"] == FULL_IMAGES
        if measured or stage["slope_cpu"] is not None:  # else one size: nothing to extrapolate along
            grow = 1.0 if measured else (FULL_IMAGES / largest["images"]) ** stage["slope_cpu"]
            stage["at_full_size"] = {"measured": measured, "cpu_s": largest["cpu_s"] * grow, "wall_s": largest["wall_s"] * grow,
                                     "disk_mb": largest["disk_mb"] * FULL_IMAGES / largest["images"]}
    return stages


def report(scales: dict[str, dict[str, Any]], retrieval: list[dict[str, Any]]) -> dict[str, Any]:
    stages = stage_table(scales)
    jobs = [(label, job) for label, run in scales.items() for job in run["jobs"]]
    worst = max(jobs, key=lambda lj: lj[1]["peak_rss_mb"], default=None)
    goals: dict[str, dict[str, Any]] = {}
    if worst:
        label, job = worst
        goals["peak_rss"] = {"ok": job["peak_rss_mb"] <= RSS_LIMIT_MB, "value_mb": job["peak_rss_mb"],
                             "where": f"{job['stage']} ({job['job']}) at {label}", "limit_mb": RSS_LIMIT_MB}
    if retrieval:
        largest = max(retrieval, key=lambda r: r["n"])
        # what retrieval itself added to the process's peak (torch alone holds about 0.5 GB)
        grew = largest["peak_rss_mb"] - largest.get("rss_before_mb", 0.0)
        goals["no_nxn_matrix"] = {"ok": grew < largest["nxn_float32_mb"] and largest["peak_rss_mb"] <= RSS_LIMIT_MB,
                                  "n": largest["n"], "peak_rss_mb": largest["peak_rss_mb"], "grew_mb": grew,
                                  "nxn_float32_mb": largest["nxn_float32_mb"]}
        probe_slope = slope([(r["n"], r["cpu_s"]) for r in retrieval])
        goals["retrieval_slope"] = {"ok": probe_slope is None or probe_slope <= RETRIEVAL_SLOPE_LIMIT, "slope_cpu": probe_slope,
                                    "limit": RETRIEVAL_SLOPE_LIMIT}
    judged = {name: s for name, s in stages.items() if s["slope_cpu"] is not None}
    if judged:
        over = {name: s["slope_cpu"] for name, s in judged.items() if s["slope_cpu"] > s["slope_limit"]}
        goals["slopes"] = {"ok": not over, "over_limit": over, "judged_on": "CPU seconds (wall seconds vary with the machine's load)"}
    resumed = [run["resume"] for run in scales.values() if run.get("resume")]
    if resumed:
        goals["resume"] = {"ok": all(r["ok"] for r in resumed), **resumed[-1]}
    return {"scales": scales, "retrieval": retrieval, "stages": stages, "goals": goals}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    scales = sorted(result["scales"].items(), key=lambda kv: kv[1]["images"])
    labels = [label for label, _ in scales]
    def sizes(run):
        return ", ".join(f"{split} {run['sizes'][split]:,}" for split in PCAM_SIZES if split in run["sizes"])

    lines = ["Scale rehearsal: " + "; ".join(f"{label} = {run['images']:,} images ({sizes(run)})" for label, run in scales)]
    header = ["stage", "jobs", *(f"{label} wall s" for label in labels), *(f"{label} CPU s" for label in labels),
              "slope wall", "slope CPU", "limit", "peak RSS MB", "disk MB", "full size CPU s"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stage in sorted(result["stages"].items(), key=lambda kv: -max(c["cpu_s"] for c in kv[1]["by_scale"].values())):
        cells = stage["by_scale"]
        largest = max(cells.values(), key=lambda c: c["images"])
        full = stage.get("at_full_size")
        note = " (retrieval)" if stage["retrieval"] else " (test x train neighbours)" if stage.get("neighbours") else ""
        row = [name + note, str(largest["jobs"]),
               *(_fmt(cells[label]["wall_s"]) if label in cells else "-" for label in labels),
               *(_fmt(cells[label]["cpu_s"]) if label in cells else "-" for label in labels),
               _fmt(stage["slope_wall"], 2), _fmt(stage["slope_cpu"], 2), f"{stage['slope_limit']:g}",
               _fmt(max(c["peak_rss_mb"] for c in cells.values()), 0), _fmt(largest["disk_mb"]),
               "-" if full is None else _fmt(full["cpu_s"], 0) + ("" if full["measured"] else " (extrapolated)")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for probe in result["retrieval"]:
        lines.append(f"retrieval alone, N = {probe['n']:,}: {probe['cpu_s']:.1f} CPU s, peak RSS {probe['peak_rss_mb']:.0f} MB, "
                     f"{probe['peak_rss_mb'] - probe.get('rss_before_mb', 0):.0f} MB over the interpreter's "
                     f"(an N x N float32 matrix: {probe['nxn_float32_mb']:,.0f} MB)")
    goals = result["goals"]
    verdict = lambda g: "PASS" if g["ok"] else "MISS"  # noqa: E731
    if "peak_rss" in goals:
        g = goals["peak_rss"]
        lines.append(f"every job's peak RSS <= {g['limit_mb']:.0f} MB: largest {g['value_mb']:.0f} MB, {g['where']} {verdict(g)}")
    if "no_nxn_matrix" in goals:
        g = goals["no_nxn_matrix"]
        lines.append(f"no N x N similarity matrix at N = {g['n']:,}: retrieval raised the peak RSS by {g['grew_mb']:.0f} MB "
                     f"(to {g['peak_rss_mb']:.0f} MB), less than one N x N float32 matrix, {g['nxn_float32_mb']:,.0f} MB {verdict(g)}")
    if "retrieval_slope" in goals:
        g = goals["retrieval_slope"]
        lines.append(f"retrieval cost against N: slope {_fmt(g['slope_cpu'], 2)} (limit {g['limit']}) {verdict(g)}")
    if "slopes" in goals:
        g = goals["slopes"]
        over = ", ".join(f"{k} {v:.2f}" for k, v in g["over_limit"].items()) or "none over"
        lines.append(f"cost against size, every stage <= {SLOPE_LIMIT} (with retrieval or kNN <= {RETRIEVAL_SLOPE_LIMIT}), "
                     f"on {g['judged_on']}: {over} {verdict(g)}")
    else:
        lines.append("cost against size: one scale only, no slope (run two or more --scales)")
    if "resume" in goals:
        g = goals["resume"]
        lines.append(f"killed (SIGKILL to Snakemake's process group) after {g['killed_after_finished']} finished jobs, "
                     f"{len(g['interrupted'])} interrupted; the resumed run (--rerun-incomplete) ran {g['rerun_jobs']} jobs, "
                     f"repeating {len(g['repeated_finished_jobs'])} finished ones {verdict(g)}")
    return lines
