"""Injected faults on the core workflow (conftest's CORE_CONFIG): SIGKILL mid-encoding, mid-fit, mid-fine-tuning and
mid-table writing, each followed by a rerun; the final metrics must equal an uninterrupted
run's in another folder, the small run (which also checks determinism across folders). And Snakemake's
lock refuses a second invocation on the same results folder.

A kill is aimed at a job's own progress, the plain ``medtune: ...`` lines it writes to its
log (``progress: false`` in the small config), never at a duration: the logs are polled until
a job has done some work and its output is not there yet; then the whole run is frozen
(SIGSTOP, until every process of it has stopped), checked again and killed.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CORE_CONFIG, CORE_LAST_TABLE, CORE_TABLES_TARGET, REPO, assert_core_run_matches, snakemake, write_config
from medtune import plan

FINETUNE_EPOCHS = CORE_CONFIG["methods"]["finetune"]["epochs"]


def start(workdir: Path, *targets: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", "--rerun-incomplete", *targets]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def mid_encoding(log: str) -> bool:
    """At least one batch encoded, and not the last."""
    done = re.findall(r"medtune: encoded batch (\d+)/(\d+)", log)
    return bool(done) and int(done[-1][0]) < int(done[-1][1])


@dataclass(frozen=True)
class Stage:
    """Where to kill: the jobs whose logs match ``logs``, once ``progressed(log text)`` and
    before the job's ``output`` (a path under results/, from the log's path under
    results/logs/) exists."""

    name: str
    targets: tuple[str, ...]  # what the run builds
    logs: str
    progressed: Callable[[str], bool]
    output: Callable[[Path], Path]


# every frozen-feature method of the core config's CLIPath study: one job per seed fits all
# its subsets (fractions and shot counts) through the shared loop of medtune.adapt.train_frozen
_METHODS = plan.validate(copy.deepcopy(CORE_CONFIG))["methods"]
FROZEN_METHODS = tuple(m for m in CORE_CONFIG["studies"]["clipath"]["methods"] if _METHODS[m]["training"] == "frozen")
FROZEN_RUNS = tuple(f"results/runs/synth/{method}/tiny/seed{seed}" for method in FROZEN_METHODS for seed in CORE_CONFIG["seeds"])
# the tables job writes them in this order; the kill must land before the last one
LAST_TABLE = CORE_LAST_TABLE
# every run, metric and table, not the figures (no test here looks at them)
TABLES = (CORE_TABLES_TARGET,)
STAGES = (
    # every encode job; train, val and test of the tiny backbone have several batches each
    # (logs/encode_images/{backbone}/{dataset}/{split}.log -> features/{backbone}/{dataset}/{split})
    Stage("encoding", tuple(f"results/features/tiny/synth/{s}" for s in ("train", "val", "test")),
          "encode_images/*/*/*.log", mid_encoding, lambda rel: "features" / rel.relative_to("encode_images").with_suffix("")),
    # a frozen fit with its first subset fitted, evaluated and saved, the others under way
    # (logs/train/{dataset}/{method}/{backbone}/seed{seed}.log -> runs/{dataset}/{method}/{backbone}/seed{seed})
    Stage("frozen fit", FROZEN_RUNS, "train/*/*/*/seed*.log",
          lambda log: re.search(r"medtune: subset \S+ fitted and evaluated", log) is not None,
          lambda rel: "runs" / rel.relative_to("train").with_suffix("")),
    # fine-tuning with at least one epoch's resume state on disk
    # (logs/train/{dataset}/{method}/{backbone}/seed{seed}/{subset}.log -> runs/.../{subset}/metrics.csv)
    Stage("fine-tuning", TABLES, "train/*/finetune_*/*/seed*/*.log",
          lambda log: re.search(r"medtune: epoch \d+ state saved", log) is not None,
          lambda rel: "runs" / rel.relative_to("train").with_suffix("") / "metrics.csv"),
    # the tables job with its first table written, the last one not yet
    Stage("table writing", TABLES, "tables.log",
          lambda log: "medtune: table " in log, lambda rel: Path(f"tables/{LAST_TABLE}.tex")),
)


@dataclass
class Kill:
    stage: str
    log: Path  # under results/logs
    text: str  # the job's log when it was killed
    output_after_kill: bool


def group_states(pgid: int) -> dict[int, str]:
    """``{pid: state}`` (``/proc/<pid>/stat``: R, S, D, T, Z, ...) of every process in a group."""
    states = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid:
            states[int(stat.parent.name)] = state
    return states


def freeze(pgid: int) -> None:
    """SIGSTOP a process group and return once every process in it has stopped (a process
    finishes the system call it is in first): from then on, nothing of it changes a file."""
    os.killpg(pgid, signal.SIGSTOP)
    deadline = time.monotonic() + 600  # a failure guard only
    while any(state not in "TtZX" for state in group_states(pgid).values()):
        assert time.monotonic() < deadline, f"process group {pgid} did not stop"
        time.sleep(0.001)


def ready(results: Path, stage: Stage) -> tuple[Path, str] | None:
    """A job of ``stage`` that has progressed and has not written its output: its log (relative
    to results/logs) and the log's text."""
    for log in sorted((results / "logs").glob(stage.logs)):
        rel = log.relative_to(results / "logs")
        try:
            text = log.read_text()
        except OSError:
            continue
        if stage.progressed(text) and not (results / stage.output(rel)).exists():
            return rel, text
    return None


def kill_on_progress(workdir: Path, stage: Stage, deadline_s: float = 3600) -> Kill | None:
    """Run the workflow and SIGKILL its whole process group as soon as a job of ``stage`` has
    progressed and has not written its output; None if the run ended first.

    When the logs say a job is there, the run is frozen (SIGSTOP) and the logs and outputs are
    checked again: only if the job is still there is the run killed, else it continues. So the
    kill lands mid-work however loaded the machine is, and ``Kill.text`` is the log it landed on.
    """
    results = workdir / "results"
    process = start(workdir, *stage.targets)
    deadline = time.monotonic() + deadline_s  # a failure guard only
    try:
        while time.monotonic() < deadline:
            if ready(results, stage) is not None:
                freeze(process.pid)
                found = ready(results, stage)
                if found is not None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    rel, text = found
                    return Kill(stage.name, rel, text, (results / stage.output(rel)).exists())
                os.killpg(process.pid, signal.SIGCONT)  # it finished meanwhile: go on
            if process.poll() is not None:
                return None
            time.sleep(0.02)
        raise AssertionError(f"no {stage.name} job progressed within {deadline_s} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def killed_four_times(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    write_config(workdir, CORE_CONFIG)
    kills, resume_states = [], []
    for stage in STAGES:
        kill = kill_on_progress(workdir, stage)
        kills.append(kill)
        if kill is not None:  # shown with pytest -s: where each kill landed
            print(f"killed during {stage.name}: {kill.log}: {kill.text.strip().splitlines()[-1]}")
        if kill is not None and stage.name == "fine-tuning":
            state_dir = workdir / "results/resume" / kill.log.with_suffix("").relative_to("train")
            resume_states.append((state_dir / "resume_state.pt").is_file())
        snakemake(workdir, "--unlock")
    snakemake(workdir, "--rerun-incomplete", *TABLES)
    return workdir, kills, resume_states


def test_every_kill_landed_mid_work(killed_four_times):
    _, kills, resume_states = killed_four_times
    assert [k.stage for k in kills if k is not None] == [s.name for s in STAGES]
    assert [k.output_after_kill for k in kills] == [False] * len(STAGES)
    assert mid_encoding(kills[0].text)
    assert resume_states == [True]  # fine-tuning was killed with an epoch's state saved


def test_killed_fine_tuning_resumed_from_its_saved_state(killed_four_times):
    """The rerun's log says it resumed after the last epoch the killed attempt saved, and it
    trains only the epochs after that one: fine-tuning did not start again from scratch."""
    workdir, kills, _ = killed_four_times
    kill = kills[2]
    saved = [int(e) for e in re.findall(r"medtune: epoch (\d+) state saved", kill.text)]
    resumed = re.findall(r"medtune: resumed from the state saved after epoch (\d+)", kill.text)
    last = saved[-1]
    assert saved == list(range(int(resumed[0]) + 1 if resumed else 1, last + 1))
    rerun = (workdir / "results/logs" / kill.log).read_text()
    assert re.findall(r"medtune: resumed from the state saved after epoch (\d+)", rerun) == [str(last)]
    assert [int(e) for e in re.findall(r"medtune: epoch (\d+) state saved", rerun)] == list(range(last + 1, FINETUNE_EPOCHS + 1))
    assert not (workdir / "results/resume" / kill.log.with_suffix("").relative_to("train")).exists()  # finished: cleared


def test_resumed_run_equals_uninterrupted_run(killed_four_times, small_run):
    """Bit-identical to the uninterrupted small run (same settings and seeds, CPU) wherever the
    core config has the same runs: every metric, the tables of the study it keeps whole
    (PathCLIP's) and its methods' rows and columns of the others."""
    workdir, _, _ = killed_four_times
    assert_core_run_matches(workdir, small_run)
    ours_topk = pd.read_csv(workdir / "results/tables/pubmedvision_topk.csv")
    pd.testing.assert_frame_equal(ours_topk, pd.read_csv(small_run / "results/tables/pubmedvision_topk.csv")[ours_topk.columns])
    accuracy = pd.read_csv(workdir / "results/tables/clipath_accuracy.csv")
    theirs = pd.read_csv(small_run / "results/tables/clipath_accuracy.csv").query("method in @accuracy.method")
    numbers = [c for c in accuracy.columns if c.endswith(("_mean", "_ci95"))]  # not "beats ...": it compares all methods
    pd.testing.assert_frame_equal(accuracy[numbers].reset_index(drop=True), theirs[numbers].reset_index(drop=True))
    for tuned in ("finetune_caption", "finetune_label"):
        weights = f"runs/synth/{tuned}/tiny/seed1/frac50/weights.pt"
        ours_w = torch.load(workdir / "results" / weights, weights_only=True)
        theirs_w = torch.load(small_run / "results" / weights, weights_only=True)
        assert ours_w.keys() == theirs_w.keys()
        assert all(torch.equal(ours_w[k], theirs_w[k]) for k in ours_w)


def test_subsets_and_features_identical_across_folders(killed_four_times, small_run):
    workdir, _, _ = killed_four_times
    for relative in ("subsets/synth/seed1/frac5.csv", "subsets/synth/seed2/frac50.csv"):
        assert (workdir / "results" / relative).read_bytes() == (small_run / "results" / relative).read_bytes()
    for relative in ("features/tiny/synth/train/clean.npy", "features/tiny/synth/test/blur-2.npy"):
        assert np.array_equal(np.load(workdir / "results" / relative), np.load(small_run / "results" / relative))


def test_no_partial_outputs_left(killed_four_times):
    workdir, _, _ = killed_four_times
    leftovers = [
        p for p in (workdir / "results").rglob("*")
        if (p.name.endswith(".part") or p.name.startswith(".")) and p.name != ".snakemake_timestamp"  # Snakemake's own
    ]
    assert leftovers == []
    assert not (workdir / "results/resume").exists() or not any((workdir / "results/resume").rglob("*.pt"))


def test_second_invocation_is_refused_by_the_lock(tmp_path, small_run):
    """While a first run holds the folder's lock, a second is refused for the lock, and the
    first ends with intact outputs. The first is frozen (SIGSTOP) once it holds the lock and
    has started a job, so on a busy machine it cannot finish before the second one checks;
    the second asks for ``--rerun-incomplete``, else Snakemake refuses it earlier for the
    first run's started (incomplete) jobs, before it ever looks at the lock."""
    write_config(tmp_path, CORE_CONFIG)
    target = "results/backbones/tiny/weights.pt"
    first = start(tmp_path, target)
    try:
        deadline = time.monotonic() + 600  # a failure guard only
        while not (list((tmp_path / ".snakemake" / "locks").glob("*")) and list((tmp_path / "results" / "logs").rglob("*.log"))):
            assert first.poll() is None, "the first run ended before it started a job"
            assert time.monotonic() < deadline, "the first run never started a job"
            time.sleep(0.02)
        freeze(first.pid)
        second = snakemake(tmp_path, "--rerun-incomplete", target, check=False)
        assert first.poll() is None  # alive (stopped) all along
        os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        assert first.wait(timeout=1800) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    ours = torch.load(tmp_path / target, weights_only=True)
    theirs = torch.load(small_run / target, weights_only=True)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for data in ("images.npy", "samples.csv"):
        assert (tmp_path / "results/data/synth" / data).read_bytes() == (small_run / "results/data/synth" / data).read_bytes()
    assert not list((tmp_path / "results").rglob("*.part"))


def test_results_on_a_disk_that_fills_during_the_tables(killed_four_times, tmp_path):
    """The finished core run again, with results/ on a small file system of its own (Snakemake's own
    .snakemake/ elsewhere, as when results: names another disk) that fills while the tables job writes:
    one line naming the path and the free space, no traceback, no partial file; after space is freed a
    rerun completes with the same tables."""
    import shutil

    from conftest import fill, small_filesystem

    workdir, _, _ = killed_four_times
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True, ignore=shutil.ignore_patterns("results"))
    size = sum(p.stat().st_size + 4096 for p in (workdir / "results").rglob("*") if p.is_file())
    with small_filesystem(copy / "results", f"{size // 1024 + 2048}k") as results:
        shutil.copytree(workdir / "results", results, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tables"))
        filler = fill(results, 24 * 1024)  # room for the job's log and a table or two, not for 21 tables
        failed = snakemake(copy, CORE_TABLES_TARGET, check=False)
        assert failed.returncode != 0 and "Traceback" not in failed.stderr
        lines = [line for line in failed.stderr.splitlines() if line.startswith("medtune")]
        assert len(lines) == 1 and lines[0].startswith("medtune error: no space left on the device writing results/tables/"), lines
        assert f" free of " in lines[0] and f"on {results})" in lines[0] and "free some space and rerun" in lines[0]
        assert not [p for p in (results / "tables").rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]
        filler.unlink()
        snakemake(copy, CORE_TABLES_TARGET)
        for table in (workdir / "results/tables").iterdir():
            assert (results / "tables" / table.name).read_bytes() == table.read_bytes(), table.name
