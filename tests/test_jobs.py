"""The wrapper every workflow script runs through: light jobs stay light."""

import json
import os
import subprocess
import sys


def _run_job(tmp_path, threads: int, body: str, env: dict, torch_threads: int | None = None) -> str:
    """Run ``main`` (whose body is ``body``) through jobs.run in a fresh interpreter, Snakemake
    holding ``threads`` cores for it (a model job: with ``params.torch_threads``); its stdout."""
    script = f"""
import json, os, sys
from medtune import jobs

class Params:
    torch_threads = {torch_threads!r}

class Smk:
    log = [{str(tmp_path / "job.log")!r}]
    threads = {threads}
    params = Params()

def main(smk):
{body}

jobs.run(main, Smk())
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", **_source_path(), **env}).stdout


def _source_path() -> dict:
    """The sources under test (a worktree's ``PYTHONPATH=src``), not whichever medtune is installed."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


def test_a_job_without_torch_does_not_import_it(tmp_path):
    """Subsets, tables and figures never touch torch; importing it costs seconds per job."""
    body = '    print(json.dumps({"torch": "torch" in sys.modules, "omp": os.environ.get("OMP_NUM_THREADS")}), file=sys.__stdout__)'
    assert json.loads(_run_job(tmp_path, 3, body, {})) == {"torch": False, "omp": "3"}


def test_torch_gets_the_granted_threads(tmp_path):
    body = "    import torch\n    print(torch.get_num_threads(), file=sys.__stdout__)"
    assert _run_job(tmp_path, 1, body, {"OMP_NUM_THREADS": "2"}).strip() == "1"


# what Snakemake puts in a job's environment: every pool sized to the cores it holds for the job
SNAKEMAKE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
POOLS_BODY = ("    import torch\n"
              "    pools = {v: os.environ.get(v) for v in jobs.THREAD_VARIABLES + ('OMP_WAIT_POLICY',)}\n"
              "    print(json.dumps({'torch': torch.get_num_threads(), **pools}), file=sys.__stdout__)")


def test_a_model_job_computes_with_its_torch_threads_on_fewer_cores(tmp_path):
    """config model_threads is part of the numbers, model_cores only of the scheduling: a model job
    held to one core computes with its two torch threads, MKL's and OpenBLAS's pools sized alike
    (an MKL pool left at Snakemake's one thread trained the default's backbone to other weights),
    and its waiting threads sleep rather than spin on the core another job needs."""
    found = json.loads(_run_job(tmp_path, 1, POOLS_BODY, SNAKEMAKE_THREAD_ENV, torch_threads=2))
    assert found == {"torch": 2, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                     "OMP_WAIT_POLICY": "PASSIVE"}
    # as many cores as threads: OpenMP's own waiting policy; a job without torch_threads: its cores
    found = json.loads(_run_job(tmp_path, 2, POOLS_BODY, {k: "2" for k in SNAKEMAKE_THREAD_ENV}, torch_threads=2))
    assert found["torch"] == 2 and found["OMP_WAIT_POLICY"] is None
    found = json.loads(_run_job(tmp_path, 1, POOLS_BODY, SNAKEMAKE_THREAD_ENV))
    assert found["torch"] == 1 and found["MKL_NUM_THREADS"] == "1" and found["OMP_WAIT_POLICY"] is None


def test_a_progress_line_is_in_the_log_at_once(tmp_path):
    """``jobs.report`` lines are what tests/test_faults.py and a user's ``tail -f`` wait on: they
    must be in the log file while the job is still running, not when it exits."""
    body = (
        "    jobs.report('encoded batch 1/7 of the train split')\n"
        "    print(open(smk.log[0]).read(), end='', file=sys.__stdout__)"
    )
    assert _run_job(tmp_path, 1, body, {}) == "medtune: encoded batch 1/7 of the train split\n"


def test_out_of_memory_while_encoding_names_the_backbone_key():
    from types import SimpleNamespace

    from medtune.jobs import oom_message

    def smk(spec):
        return SimpleNamespace(rule="encode_images", params=SimpleNamespace(spec=spec))

    assert oom_message(smk({"arch": "RN50", "encode_batch_size": 64})) == (
        "out of GPU memory in rule encode_images at batch size 64; lower backbones.<name>.encode_batch_size (now 64)"
    )
    assert "at batch size 256;" in oom_message(smk({"arch": "RN50"}))  # the default


def test_a_job_logs_what_it_used(tmp_path):
    """The usage line: the kernel's peak RSS (a 30 s benchmark sample can miss it), CPU and wall seconds."""
    from medtune.jobs import read_usage

    body = "    import numpy as np\n    np.ones(300 * 2**20 // 8).sum()  # 300 MB touched, then freed"
    _run_job(tmp_path, 1, body, {})
    usage = read_usage(tmp_path / "job.log")
    assert usage["peak_rss_mb"] >= 300 and usage["cpu_s"] > 0
    assert usage["wall_s"] is None or usage["wall_s"] >= usage["cpu_s"] * 0.5  # wall since the interpreter started
    assert read_usage(tmp_path / "absent.log") is None
