"""Figure 4, the embedded default end to end: job seconds, start-up share and wall time of the last run.

From Snakemake's benchmark files under ``results/benchmarks`` (one per job) and its logs under
``.snakemake/log``. ``startup_share`` is the share of the summed job seconds spent starting
Python and importing what each kind of job imports, measured here in fresh interpreters.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medtune.bench.figure import TARGETS, Figure, meets
from medtune.bench.snakemake_logs import last_run_log, read_benchmarks


# What each kind of job imports, its script's imports and those its work makes lazily (the
# method module of a fit; open_clip for the run's architecture, which leaves out the towers
# it does not use), measured the same way. ``{module}``: a frozen method's module;
# ``{arch}``: the backbone architecture of the run.
STARTUP_IMPORTS = {
    "data": "import medtune.data.sources, medtune.data.store, medtune.subsets",
    "report": "import medtune.tables, medtune.figures",  # collect_metrics, tables, figures
    "evaluate": "import medtune.adapt",  # zero-shot evaluation
    "frozen fit": "import medtune.adapt, {module}",  # heads on cached features
    "model": "import medtune.adapt, medtune.encode; from medtune.models import registered_open_clip; "
             "registered_open_clip({arch!r})",  # jobs that build an open_clip model
}
REPORT_RULES = ("collect_metrics", "tables", "figures")


def startup_kind(rule: str, path: str, methods: dict[str, dict[str, Any]]) -> str:
    """Which of STARTUP_IMPORTS a benchmarked job pays, from its rule and benchmark path:
    ``frozen fit: {method}`` for a frozen method's fit, else a key of STARTUP_IMPORTS.

    Snakemake's benchmark files carry no labels: a training job's method is the folder of
    its benchmark path named like a configured method (``methods``: the validated config's).
    """
    if rule in ("prepare_dataset", "subsample", "robustness_index"):  # the index: numpy and pandas, no torch
        return "data"
    if rule in REPORT_RULES:
        return "report"
    if rule == "zeroshot":
        return "evaluate"
    if rule == "train":
        folders = set(Path(path).parts)
        name = next((name for name in methods if name in folders), None)
        method = methods.get(name) if name else None
        if method and method["training"] == "frozen" and not method["needs_text_encoder"]:
            return f"frozen fit: {name}"
    return "model"


def startup_statement(kind: str, methods: dict[str, dict[str, Any]], arch: str, imports: dict[str, str]) -> str:
    """The import statement of a kind of job (:func:`startup_kind`)."""
    if kind.startswith("frozen fit: "):
        method = methods[kind.split(": ", 1)[1]]
        return imports["frozen fit"].format(module=method.get("module") or method.get("source"), arch=arch)
    return imports[kind].format(arch=arch, module="")


def time_imports(repeats: int = 3, statement: str = STARTUP_IMPORTS["evaluate"]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_end_to_end(results: Path, workdir: Path, import_repeats: int = 3, imports: dict[str, str] | None = None,
                     methods: dict[str, dict[str, Any]] | None = None, arch: str = "medtune-tiny") -> dict[str, Any]:
    """Snakemake's benchmark files under ``results`` and the logs of the runs in ``workdir``
    (``methods``: the run's validated config's, by default the registered ones; ``arch``: its
    backbones' architecture)."""
    if methods is None:
        from medtune.methods import registered

        methods = {n: {"training": m.training, "needs_text_encoder": m.needs_text_encoder, "module": m.source}
                   for n, m in registered().items()}
    table = read_benchmarks(results / "benchmarks")
    complete, newest = last_run_log(workdir / ".snakemake" / "log")
    out: dict[str, Any] = {"benchmark_files": len(table), "last_complete_run": complete, "newest_run": newest}
    if table.empty:
        return out
    per_rule = table.groupby("rule")["s"].agg(["count", "sum", "mean"]).sort_values("sum", ascending=False)
    kinds = [startup_kind(rule, path, methods) for rule, path in zip(table["rule"], table["path"])]
    statements = {kind: startup_statement(kind, methods, arch, imports or STARTUP_IMPORTS) for kind in sorted(set(kinds))}
    import_s = {kind: time_imports(import_repeats, statement) for kind, statement in statements.items()}
    startup_s = sum(import_s[kind] for kind in kinds)
    job_s = float(table["s"].sum())
    out.update(
        job_seconds=job_s,
        per_rule={rule: {"jobs": int(r["count"]), "seconds": float(r["sum"]), "mean_s": float(r["mean"])} for rule, r in per_rule.iterrows()},
        import_s=import_s,
        import_statements=statements,
        jobs_by_kind={kind: kinds.count(kind) for kind in import_s},
        startup_s=startup_s,
        startup_share=startup_s / job_s if job_s else None,
        max_rss_mb=float(table["max_rss"].max()) if "max_rss" in table else None,
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )
    return out


def end_to_end_figure(r: dict[str, Any]) -> Figure:
    """The last complete run's wall time against its target; ``startup_share`` also at the JSON's top level."""
    name = "embedded default end to end"
    data = {"startup_share": r.get("startup_share"), "result": r}
    details = []
    if r["benchmark_files"]:
        details.append(f"{r['benchmark_files']} benchmarked jobs, {r['job_seconds']:.0f} s summed: " + ", ".join(
            f"{rule} {v['seconds']:.0f} s ({v['jobs']} jobs, {v['mean_s']:.1f} s each)" for rule, v in r["per_rule"].items()))
        per_kind = ", ".join(f"{r['jobs_by_kind'][k]} {k} jobs x {s:.1f} s" for k, s in r["import_s"].items())
        share = "(no job seconds to compare)"
        if r["startup_share"] is not None:
            verdict = "PASS" if meets("startup_share", r["startup_share"]) else "MISS"
            share = f"{r['startup_share']:.0%} of the summed job seconds (target {TARGETS['startup_share'][2]}) {verdict}"
        load = f"; load average when measured {r['load_average'][0]:.1f}" if r.get("load_average") else ""
        details.append(f"outside model compute: starting Python + each job's imports ({per_kind}) = {r['startup_s']:.0f} s, "
                       f"{share}{load}")
    else:
        details.append("no Snakemake benchmark files under results/benchmarks: run `make run` first")
    complete, newest = r["last_complete_run"], r["newest_run"]
    if newest is not None and (complete is None or newest["log"] != complete["log"]):
        state = "a partial re-run" if newest["complete"] else f"not complete ({newest['steps_done']} of {newest['steps']} steps)"
        details.append(f"a later run ({Path(newest['log']).name}) is {state}: {newest['steps']} jobs, {newest['wall_s']:.0f} s wall")
    if complete is None:
        return Figure("end_to_end", name, None, "no complete run in .snakemake/log (run `make run` first)", details, data)
    kind = "run from scratch" if complete["from_scratch"] else "run (a partial re-run: no run from scratch in the logs)"
    details.insert(0, f"wall time of the last complete {kind} ({Path(complete['log']).name}, {complete['steps']} jobs), "
                      "first to last log timestamp")
    return Figure("end_to_end", name, complete["wall_s"], f"{complete['wall_s'] / 60:.1f} min wall", details, data)
