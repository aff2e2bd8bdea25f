"""The workflow on a real single-node SLURM cluster started on this machine.

tests/slurm/setup.sh installs the Debian packages (slurmctld slurmd slurm-client munge)
when missing and starts a throwaway cluster with two fake GPUs; tests/slurm/teardown.sh
stops it. Needs root. When the cluster cannot be started the tests FAIL and say why;
MEDTUNE_SKIP_SLURM_TEST=1 skips them on purpose (reported by pytest -ra).
"""

import ast
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import CORE_CONFIG, CORE_TABLES_TARGET, REPO, assert_core_run_matches, write_config

SLURM_DIR = Path(os.environ.get("MEDTUNE_SLURM_DIR", "/tmp/medtune-slurm"))
GPU_RULES = {"pretrain_backbone", "encode_images", "train_backbone"}  # + train_frozen for CoOp


def wants_gpu(rule: str, wildcards: str) -> bool:
    return rule in GPU_RULES or (rule == "train_frozen" and "coop" in wildcards)


pytestmark = pytest.mark.skipif(
    os.environ.get("MEDTUNE_SKIP_SLURM_TEST") == "1", reason="MEDTUNE_SKIP_SLURM_TEST=1: the SLURM tests were switched off"
)


@pytest.fixture(scope="module")
def slurm_cluster():
    t0 = time.monotonic()
    setup = subprocess.run(["bash", str(REPO / "tests/slurm/setup.sh")], capture_output=True, text=True, timeout=1200)
    if setup.returncode != 0:
        pytest.fail(
            "could not start the test SLURM cluster (tests/slurm/setup.sh):\n"
            f"{setup.stderr[-3000:]}{setup.stdout[-1000:]}",
            pytrace=False,
        )
    print(f"SLURM test cluster up in {time.monotonic() - t0:.0f} s")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    try:
        yield SLURM_DIR
    finally:
        subprocess.run(["bash", str(REPO / "tests/slurm/teardown.sh")], capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def slurm_profile(folder: Path) -> Path:
    """profiles/slurm as shipped, plus what this cluster needs: no accounts, no slurmdbd."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert {rule for rule, res in profile["set-resources"].items() if res.get("gpu") == 1} == GPU_RULES
    assert "text_encoder" in str(profile["set-resources"]["train_frozen"]["gpu"])
    profile.update(
        {
            "slurm-no-account": True,
            # no slurmdbd here, so sacct cannot answer; squeue can (MinJobAge=600)
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "jobs": 6,
            "latency-wait": 10,
            "retries": 0,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def run_on_slurm(workdir: Path, snakefile: Path, profile: Path, *args: str) -> None:
    cmd = [sys.executable, str(REPO / "tests/slurm/snakemake_fastpoll.py"), "-s", str(snakefile)]
    cmd += ["--directory", str(workdir), "--profile", str(profile), *args]
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"snakemake on SLURM failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def slurm_jobs(run_dir: Path) -> list[dict[str, str]]:
    """The test cluster's jobs submitted from run_dir (scontrol keeps them MinJobAge=600 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("WorkDir") == str(run_dir):
            jobs.append(fields)
    return jobs


def rule_of(job: dict[str, str]) -> tuple[str, str]:
    """(rule, wildcard values) of a job, from the comment the plugin gives it."""
    match = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", job["Comment"])
    return match.group(1), match.group(2) or ""


GPU_SNAKEFILE = textwrap.dedent(
    """
    import os, time
    from medtune.devices import acquire_gpu

    rule all:
        input: expand("out/{name}.txt", name=["a", "b", "c", "d"])

    rule gpu_job:
        output: "out/{name}.txt"
        threads: 1
        resources: gpu=1, mem_mb=500, runtime=5
        run:
            with acquire_gpu(timeout=30) as dev:
                start = time.time()
                time.sleep(3)
                end = time.time()
            env = {k: os.environ.get(k, "") for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}
            with open(output[0], "w") as f:
                f.write(repr({"acquired": dev, "start": start, "end": end, **env}))
    """
)


def test_gpu_jobs_get_their_own_device_from_slurm(slurm_cluster, tmp_path):
    """gpu=1 jobs are submitted with --gpus=1, SLURM picks the device, acquire_gpu stands back."""
    workdir = tmp_path / "gpu"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(GPU_SNAKEFILE)
    run_on_slurm(workdir, workdir / "Snakefile", slurm_profile(tmp_path / "profile"))
    records = [ast.literal_eval((workdir / "out" / f"{name}.txt").read_text()) for name in "abcd"]
    for rec in records:
        assert rec["SLURM_JOB_ID"] and rec["acquired"] is None, rec  # SLURM's choice stands
        assert rec["CUDA_VISIBLE_DEVICES"] in {"0", "1"}, rec
    by_device = {}
    for rec in records:
        by_device.setdefault(rec["CUDA_VISIBLE_DEVICES"], []).append((rec["start"], rec["end"]))
    assert set(by_device) == {"0", "1"}, records
    for spans in by_device.values():
        spans.sort()
        assert all(s2 >= e1 for (_, e1), (s2, _) in zip(spans, spans[1:])), records
    jobs = slurm_jobs(workdir)
    assert len(jobs) == 4 and all(job["TresPerJob"] == "gres:gpu:1" for job in jobs), jobs


def test_core_workflow_on_slurm_matches_local_run(slurm_cluster, small_run, tmp_path):
    """The core config (one method of each kind, every GPU rule) through sbatch: the same numbers
    as the small run's on this machine."""
    workdir = tmp_path / "slurm"
    write_config(workdir, CORE_CONFIG)
    profile = slurm_profile(tmp_path / "profile")
    t0 = time.monotonic()
    # every run, metric and table; the figures are short CPU jobs like the tables job
    run_on_slurm(workdir, REPO / "Snakefile", profile, CORE_TABLES_TARGET, "--configfile", str(workdir / "config.yaml"))  # --configfile takes several
    print(f"CORE_CONFIG on SLURM: {time.monotonic() - t0:.0f} s")

    # every job went through sbatch; the GPU rules asked for a GPU, the others did not
    jobs = slurm_jobs(workdir)
    rules = [rule_of(job) for job in jobs]
    assert GPU_RULES | {"train_frozen"} <= {rule for rule, _ in rules}, rules
    assert any(wants_gpu(*r) for r in rules) and not all(wants_gpu(*r) for r in rules), rules
    for job, (rule, wildcards) in zip(jobs, rules):
        if wants_gpu(rule, wildcards):
            assert job.get("TresPerJob") == "gres:gpu:1", (rule, wildcards, job)
        else:
            assert "gpu" not in job.get("TresPerJob", ""), (rule, wildcards, job)
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [(rule_of(j), j["JobState"]) for j in jobs]

    # same numbers as the local run: CPU training is deterministic
    assert_core_run_matches(workdir, small_run)
