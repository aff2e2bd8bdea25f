"""The wrapper every workflow script runs through: light jobs stay light."""

import json
import subprocess
import sys


def _run_job(tmp_path, threads: int, body: str, env: dict) -> str:
    """Run ``main`` (whose body is ``body``) through jobs.run in a fresh interpreter; its stdout."""
    script = f"""
import json, os, sys
from medtune import jobs

class Smk:
    log = [{str(tmp_path / "job.log")!r}]
    threads = {threads}

def main(smk):
{body}

jobs.run(main, Smk())
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", **env}).stdout


def test_a_job_without_torch_does_not_import_it(tmp_path):
    """Subsets, tables and figures never touch torch; importing it costs seconds per job."""
    body = '    print(json.dumps({"torch": "torch" in sys.modules, "omp": os.environ.get("OMP_NUM_THREADS")}), file=sys.__stdout__)'
    assert json.loads(_run_job(tmp_path, 3, body, {})) == {"torch": False, "omp": "3"}


def test_torch_gets_the_granted_threads(tmp_path):
    body = "    import torch\n    print(torch.get_num_threads(), file=sys.__stdout__)"
    assert _run_job(tmp_path, 1, body, {"OMP_NUM_THREADS": "2"}).strip() == "1"
