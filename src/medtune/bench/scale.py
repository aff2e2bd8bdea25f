"""Scale rehearsal: ``python -m medtune.bench.scale`` (``make bench-scale``; not part of ``make bench``).

Runs the frozen-feature part of the real workflow, through Snakemake in a scratch folder, on a
synthetic store of PCam's shape and size (262,144 train, 32,768 val and 32,768 test images of
96 px, two classes; the embedded default's generator) with the tiny backbone (``medtune-tiny``,
untrained: the cheapest), the paper config's linear-probe and RFC settings and kNN's defaults:

    prepare -> subsample (6 fractions x 3 seeds, one job) -> encode (train and val clean; test
    under the 29 PathCLIP conditions) -> zero-shot, linear probe, RFC, kNN at every fraction x
    seed -> retrieval HA@5/HA@10 over all test images (zero-shot: every condition) -> tables, figures

and the same at smaller sizes (``--scales 16 4 1``: 1/16, 1/4 and full size) for cost against
size. From Snakemake's benchmark files and each job's usage line (:mod:`medtune.jobs`) it
records per job and per stage the wall time, CPU time, peak RSS and the disk its outputs take
(:mod:`.scale_report`), into ``results/bench/scale.json`` (a later run adds its scales to those
already there), and checks the goals: every job's peak RSS <= 4 GB; no N x N similarity matrix
(retrieval at N = 32,768 measured on its own); a log-log slope of cost against size <= 1.1 for
every stage but those with retrieval or kNN (each test image against all training images: <= 2.05); a run killed mid-way (SIGKILL to Snakemake's
process group) and resumed with ``--rerun-incomplete`` repeats no job that had finished.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from medtune.bench.inputs import REPO
from medtune.bench.snakemake_cli import job_count, snakemake_cmd
from medtune.io import read_json, write_json, write_text

PCAM_SIZES = {"train": 262_144, "val": 32_768, "test": 32_768}
FRACTIONS = [0.1, 0.5, 1, 5, 10, 50]
SEEDS = [1, 2, 3]
DATASET, BACKBONE = "pcam-synthetic", "tiny"
IMAGE_SIZE = 96


def scale_label(divisor: int) -> str:
    return "full" if divisor == 1 else f"1_{divisor}"


def scale_config(divisor: int, repo: Path = REPO) -> dict[str, Any]:
    """The rehearsal's config at 1/``divisor`` of PCam's size; the linear probe and RFC as the paper
    config sets them, kNN (which the paper config does not run) with its defaults."""
    from medtune.data import synthetic

    paper = yaml.safe_load((repo / "config" / "paper" / "all.yaml").read_text())
    pcam = paper["datasets"]["pcam"]
    classes = list(synthetic.CLASSES[:2])
    return {
        "device": "cpu",
        "progress": False,
        "seeds": SEEDS,
        "datasets": {
            DATASET: {
                "source": "synthetic",
                "image_size": IMAGE_SIZE,
                "seed": 0,
                "classes": classes,
                "sizes": {split: n // divisor for split, n in PCAM_SIZES.items()},
                "prompts": {"templates": pcam["prompts"]["templates"]},
            }
        },
        "backbones": {BACKBONE: {"arch": "medtune-tiny", "init_seed": 0}},
        "methods": {name: paper["methods"][name] for name in ("linear_probe", "rfc")},
        "studies": {
            "clipath": {"datasets": [DATASET], "backbones": [BACKBONE], "methods": ["zeroshot", "linear_probe", "rfc", "knn"],
                        "fractions": FRACTIONS, "seeds": SEEDS, "conditions": ["clean"]},
            "pathclip": {"datasets": [DATASET], "backbones": [BACKBONE], "methods": ["zeroshot"], "conditions": ["pathclip"]},
        },
    }


# --- running Snakemake -------------------------------------------------------------------


def parse_jobs(text: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """From a Snakemake log: every started job (jobid -> rule, output, ...) and the jobids that finished."""
    started: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\S+):$", line)
        if m:
            current = {"rule": m.group(1)}
            continue
        if current is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            current[key] = value
            if key == "jobid":
                started[value] = current
            continue
        current = None
    finished = re.findall(r"^Finished jobid: (\d+)", text, re.M)
    return started, finished


def job_identity(job: dict[str, str]) -> str:
    """What a job makes: its rule and outputs (jobids differ between runs)."""
    return f"{job['rule']}: {job.get('output', '')}"


def run_snakemake(repo: Path, workdir: Path, cores: int, log_path: Path, extra: Sequence[str] = (),
                  kill_after: int | None = None) -> dict[str, Any]:
    """Run the workflow in ``workdir`` (its ``config.yaml``); with ``kill_after``, SIGKILL Snakemake's
    process group (jobs included) once that many jobs have finished."""
    cmd = snakemake_cmd(repo, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
                        "--cores", str(cores), *extra)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    killed = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            try:
                proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                pass
            if kill_after is not None:
                _, finished = parse_jobs(log_path.read_text(errors="replace"))
                if len(finished) >= kill_after:
                    os.killpg(proc.pid, signal.SIGKILL)  # nothing gets to clean up: the harshest interruption
                    proc.wait()
                    killed = True
                    break
    text = log_path.read_text(errors="replace")
    started, finished = parse_jobs(text)
    return {"cmd": " ".join(cmd), "returncode": proc.returncode, "killed": killed, "wall_s": time.perf_counter() - t0,
            "jobs": job_count(text), "started": {i: job_identity(j) for i, j in started.items()},
            "finished": [job_identity(started[i]) for i in finished if i in started], "log": str(log_path)}


def run_scale(repo: Path, workdir: Path, divisor: int, cores: int, resume_check: bool, log=print) -> dict[str, Any]:
    """One scale from scratch: write its config, run it (killed once and resumed, with ``resume_check``)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = scale_config(divisor, repo)
    write_text(yaml.safe_dump(config, sort_keys=False), workdir / "config.yaml")
    out: dict[str, Any] = {"divisor": divisor, "sizes": config["datasets"][DATASET]["sizes"], "workdir": str(workdir)}
    out["images"] = sum(out["sizes"].values())
    if not resume_check:
        first = run_snakemake(repo, workdir, cores, workdir / "snakemake.log")
        out["runs"] = [first]
        return out
    # kill once half of the jobs have finished (a dry run counts them), then resume
    dry = subprocess.run(snakemake_cmd(repo, "-n", "--directory", str(workdir), "--configfile", str(workdir / "config.yaml")),
                         capture_output=True, text=True, cwd=workdir)
    total = job_count(dry.stdout + dry.stderr) or 2
    log(f"  {total} jobs; killing Snakemake's process group after {total // 2} have finished, then resuming")
    first = run_snakemake(repo, workdir, cores, workdir / "snakemake-killed.log", kill_after=max(1, total // 2))
    unlock = subprocess.run(snakemake_cmd(repo, "--unlock", "--directory", str(workdir), "--configfile",
                                          str(workdir / "config.yaml")), capture_output=True, text=True, cwd=workdir)
    second = run_snakemake(repo, workdir, cores, workdir / "snakemake.log", extra=["--rerun-incomplete"])
    repeated = sorted(set(first["finished"]) & set(second["started"].values()))
    out["runs"] = [first, second]
    out["resume"] = {"killed_after_finished": len(first["finished"]), "killed": first["killed"],
                     "interrupted": sorted(set(first["started"].values()) - set(first["finished"])),
                     "unlock_returncode": unlock.returncode, "rerun_jobs": len(second["started"]),
                     "rerun_returncode": second["returncode"], "repeated_finished_jobs": repeated,
                     "ok": first["killed"] and second["returncode"] == 0 and not repeated}
    return out


# --- retrieval on its own ------------------------------------------------------------------

RETRIEVAL_PROBE = """
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from medtune.retrieval import retrieval_metrics
n, dim = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
features, labels = rng.standard_normal((n, dim), dtype=np.float32), rng.integers(0, 2, n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0, c0 = time.perf_counter(), time.process_time()
retrieval_metrics(features, labels, ks=(5, 10))
print(json.dumps({"n": n, "dim": dim, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": before}))
"""


def probe_retrieval(n: int, dim: int = 64) -> dict[str, Any]:
    """HA@5/HA@10 over ``n`` random features in a fresh interpreter: its time and peak RSS."""
    import json

    proc = subprocess.run([sys.executable, "-c", RETRIEVAL_PROBE, str(n), str(dim)], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["nxn_float32_mb"] = n * n * 4 / 2**20  # the smallest N x N matrix it could hold
    return result


# --- command line --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medtune.bench.scale", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[16, 4, 1],
                   help="divisors of PCam's size to run: 16 = 1/16, 1 = full size (262,144 + 32,768 + 32,768 images)")
    p.add_argument("--resume-check", type=int, default=None,
                   help="the divisor whose run is killed once and resumed (default: the largest scale run; 0: none)")
    p.add_argument("--retrieval-n", type=int, nargs="*", default=[2048, 8192, 32768],
                   help="sizes of the stand-alone retrieval check (its peak RSS against an N x N matrix, its slope)")
    p.add_argument("--repo", type=Path, default=REPO)
    p.add_argument("--out", type=Path, default=None, help="default: REPO/results/bench (scale.json)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder for the runs (default: OUT/scale-runs)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep each scale's scratch folder (the full size takes about 10 GB)")
    p.add_argument("--report-only", action="store_true", help="recompute the report from OUT/scale.json, run nothing")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from medtune.bench.machine import describe_machine, machine
    from medtune.bench.scale_report import collect_scale, report, summary_lines

    args = parse_args(argv)
    repo = args.repo.resolve()
    out = (args.out or repo / "results" / "bench").resolve()
    workroot = (args.workdir or out / "scale-runs").resolve()
    path = out / "scale.json"
    previous = read_json(path) if path.exists() else {}
    scales = dict(previous.get("scales", {}))
    m = machine()
    print(f"medtune scale rehearsal on {describe_machine(m)}", flush=True)
    if not args.report_only:
        resume_at = max(args.scales, key=lambda d: PCAM_SIZES["train"] // d) if args.resume_check is None else args.resume_check
        for divisor in sorted(args.scales, reverse=True):
            label = scale_label(divisor)
            print(f"[{label}] {sum(n // divisor for n in PCAM_SIZES.values()):,} images; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            workdir = workroot / label
            run = run_scale(repo, workdir, divisor, args.cores, resume_check=divisor == resume_at)
            run.update(collect_scale(repo, workdir), load_average_after=os.getloadavg(), date=m["date"],
                       bench_command="python -m medtune.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]))
            scales[label] = run
            write_json({**previous, "scales": scales}, path)  # each scale as soon as it is done
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        retrieval = [probe_retrieval(n) for n in args.retrieval_n]
    else:
        retrieval = previous.get("retrieval", [])
    result = report(scales, retrieval)
    command = "python -m medtune.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    result.update(machine=previous.get("machine", m) if args.report_only else m,
                  command=previous.get("command", command) if args.report_only else command)
    write_json(result, path)
    text = "\n".join(summary_lines(result))
    print(text)
    write_text(text + "\n", out / "scale.md")
    print(f"written: {path} and {out / 'scale.md'}")
    return result


if __name__ == "__main__":
    main()
