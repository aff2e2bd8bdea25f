"""The wrapper every workflow script runs through: light jobs stay light."""

import json
import subprocess
import sys


def test_a_job_without_torch_does_not_import_it(tmp_path):
    """Subsets, tables and figures never touch torch; importing it costs seconds per job."""
    script = f"""
import json, os, sys
from medtune import jobs

class Smk:
    log = [{str(tmp_path / "job.log")!r}]
    threads = 3

def main(smk):
    print(json.dumps({{"torch": "torch" in sys.modules, "omp": os.environ.get("OMP_NUM_THREADS")}}), file=sys.__stdout__)

jobs.run(main, Smk())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == {"torch": False, "omp": "3"}


def test_torch_gets_the_granted_threads(tmp_path):
    script = f"""
import sys
from medtune import jobs

class Smk:
    log = [{str(tmp_path / "job.log")!r}]
    threads = 1

def main(smk):
    import torch
    print(torch.get_num_threads(), file=sys.__stdout__)

jobs.run(main, Smk())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert out.stdout.strip() == "1"
