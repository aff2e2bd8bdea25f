"""Injected faults on the small workflow: SIGKILL mid-encode, mid-training and mid-table
writing, each followed by a rerun; the final metrics must equal an uninterrupted run's in
another folder (which also checks determinism across folders). And Snakemake's lock refuses
a second invocation on the same results folder."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SMALL_CONFIG, snakemake, write_config


def start(workdir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", "--rerun-incomplete"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 1800) -> bool:
    """SIGKILL the whole process group once ``ready()`` is true; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("the condition to kill on never came")


def running(workdir: Path, pattern: str):
    """True once a job whose log matches ``pattern`` has started (its log file exists)."""
    return lambda: any((workdir / "results" / "logs").glob(pattern))


@pytest.fixture(scope="module")
def killed_three_times(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    write_config(workdir, SMALL_CONFIG)
    kills = []
    for stage in ("encode_images/*/*/*.log", "train/*/rfc/*/*.log", "tables.log"):
        process = start(workdir)
        kills.append(kill_when(process, running(workdir, stage)))
        snakemake(workdir, "--unlock")
    snakemake(workdir, "--rerun-incomplete")
    return workdir, kills


def test_every_kill_landed(killed_three_times):
    _, kills = killed_three_times
    assert kills == [True, True, True]


def test_resumed_run_equals_uninterrupted_run(killed_three_times, small_run):
    workdir, _ = killed_three_times
    ours = pd.read_csv(workdir / "results" / "metrics.csv")
    theirs = pd.read_csv(small_run / "results" / "metrics.csv")
    pd.testing.assert_frame_equal(ours, theirs)  # bit-identical: same config, same seeds, CPU
    for table in ("clipath_accuracy.csv", "pathclip_retrieval.csv", "pubmedvision_topk.csv"):
        assert (workdir / "results/tables" / table).read_bytes() == (small_run / "results/tables" / table).read_bytes()


def test_subsets_and_features_identical_across_folders(killed_three_times, small_run):
    workdir, _ = killed_three_times
    for relative in ("subsets/synth/seed1/frac5.csv", "subsets/synth/seed2/frac50.csv"):
        assert (workdir / "results" / relative).read_bytes() == (small_run / "results" / relative).read_bytes()
    for relative in ("features/tiny/synth/train/clean.npy", "features/tiny/synth/test/blur-2.npy"):
        assert np.array_equal(np.load(workdir / "results" / relative), np.load(small_run / "results" / relative))


def test_no_partial_outputs_left(killed_three_times):
    workdir, _ = killed_three_times
    leftovers = [
        p for p in (workdir / "results").rglob("*")
        if (p.name.endswith(".part") or p.name.startswith(".")) and p.name != ".snakemake_timestamp"  # Snakemake's own
    ]
    assert leftovers == []


def test_second_invocation_is_refused_by_the_lock(tmp_path):
    write_config(tmp_path, SMALL_CONFIG)
    first = start(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / ".snakemake" / "locks").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Snakemake checks for incomplete files before it checks the lock: once the first run
        # has started a job, a plain second run would be refused for those files instead.
        # --rerun-incomplete skips that check, so only the lock can refuse it.
        second = snakemake(tmp_path, "--rerun-incomplete", check=False)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
