"""`python -m snakemake`, with the SLURM executor polling job states every 2 s at most.

For tests/test_slurm.py only. The plugin waits 1, 11, 21, ... s between checks (+10 s each
time no job has finished, up to 180 s), so on a test cluster where jobs take seconds every
stage of the DAG waited half a minute to be noticed. What is tested does not depend on the
polling rhythm: jobs, sbatch options and results are those of a plain run.
"""

import os
import sys

import snakemake_executor_plugin_slurm as slurm
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

CAP = float(os.environ.get("MEDTUNE_TEST_SLURM_POLL_S", "2"))
_base = RemoteExecutor.next_seconds_between_status_checks

slurm.Executor.next_seconds_between_status_checks = property(
    lambda self: min(_base.fget(self), CAP),
    _base.fset,
)

from snakemake.cli import main  # noqa: E402

sys.argv[0] = "snakemake"
main()
