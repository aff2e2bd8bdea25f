"""Figure 3, DAG build: ``snakemake -n`` on the paper config, and a no-op ``-n`` on the embedded default."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from medtune.bench.figure import Figure
from medtune.bench.snakemake_cli import dry_run_reasons, job_count, snakemake_cmd, timed


def bench_dag_paper(repo: Path, configfile: Path, cores: int = 2) -> dict[str, Any]:
    """``snakemake -n`` on ``configfile`` in a temporary working directory."""
    with tempfile.TemporaryDirectory(prefix="medtune-bench-dag-") as tmp:
        config = Path(tmp) / configfile.name
        shutil.copy(configfile, config)
        seconds, rc, out = timed(snakemake_cmd(repo, "-n", "--directory", tmp, "--configfile", str(config), "--cores", str(cores)))
    return {"config": str(configfile), "seconds": seconds, "returncode": rc, "jobs": job_count(out), "tail": out[-2000:] if rc else ""}


def dag_paper_figure(r: dict[str, Any]) -> Figure:
    if r["returncode"] != 0 or r["jobs"] is None:
        return Figure("dag_paper", "DAG build, paper config", None, f"snakemake -n failed (exit {r['returncode']})",
                      [r["tail"][-500:]], {"result": r})
    return Figure("dag_paper", "DAG build, paper config", r["seconds"], f"{r['seconds']:.1f} s for {r['jobs']} jobs",
                  [f"snakemake -n --configfile {Path(r['config']).name} in a temporary folder, interpreter start included"],
                  {"result": r})


def bench_noop_default(repo: Path, workdir: Path, cores: int = 2, run_first: bool = False, log_dir: Path | None = None) -> dict[str, Any]:
    """``snakemake -n`` on the embedded default in ``workdir``; optionally ``snakemake`` (the whole default) first."""
    result: dict[str, Any] = {"ran_default": False, "workdir": str(workdir)}
    where = ("--directory", str(workdir), "--cores", str(cores))
    if run_first:
        seconds, rc, _ = timed(snakemake_cmd(repo, *where), cwd=workdir,
                               log_path=(log_dir / "default_run.log") if log_dir else None)
        result.update(ran_default=True, default_run_s=seconds, default_run_returncode=rc)
    seconds, rc, out = timed(snakemake_cmd(repo, "-n", *where), cwd=workdir)
    result.update(seconds=seconds, returncode=rc, pending_jobs=job_count(out), nothing_to_do="Nothing to be done" in out,
                  reasons=dry_run_reasons(out), tail=out[-2000:] if rc else "")
    return result


def noop_figure(r: dict[str, Any]) -> Figure:
    name = "no-op re-run, embedded default"
    if r["returncode"] != 0:
        return Figure("noop_default", name, None, f"snakemake -n failed (exit {r['returncode']})", [r["tail"][-500:]], {"result": r})
    if not r["nothing_to_do"]:
        why = "; ".join(f"{k}: {v}" for k, v in r.get("reasons", {}).items())
        return Figure("noop_default", name, None,
                      f"not measured: the embedded default in {r['workdir']} is not up to date ({r['pending_jobs']} jobs to do; "
                      f"that `snakemake -n` took {r['seconds']:.1f} s)",
                      ["run `make run` first, or pass --with-default-run to run it from here"] + ([f"why: {why}"] if why else []),
                      {"result": r})
    details = ["`snakemake -n` says nothing to be done; interpreter start included"]
    if r.get("ran_default"):
        details.append(f"the default was run first here: {r['default_run_s']:.0f} s (exit {r['default_run_returncode']})")
    return Figure("noop_default", name, r["seconds"], f"{r['seconds']:.1f} s", details, {"result": r})
