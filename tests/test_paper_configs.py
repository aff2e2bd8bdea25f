"""Each paper config builds its whole DAG without any data or weights present."""

import resource
import shutil
import time

import pytest
import yaml

from conftest import REPO, job_counts, snakemake
from medtune import plan

PAPER_CONFIGS = sorted((REPO / "config" / "paper").glob("*.yaml"))


def test_there_is_one_config_per_seed_and_one_for_all():
    # and the leaderboard of today's backbones and robustness beyond corruptions (beyond the seeds)
    assert [p.stem for p in PAPER_CONFIGS] == ["all", "clipath", "leaderboard", "pathclip", "pubmedvision", "robustness"]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_dry_run_builds_the_full_dag(path, tmp_path):
    shutil.copy(path, tmp_path / "config.yaml")
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    counts = job_counts(result.stdout)
    config = plan.validate(yaml.safe_load(path.read_text()))
    runs = plan.runs(config)
    training = lambda r: config["methods"][r.method]["training"]
    frozen_seeds = {(r.dataset, r.method, r.backbone, r.seed) for r in runs if training(r) == "frozen"}
    assert counts.get("train_frozen", 0) == len(frozen_seeds)  # one job per seed, every fraction in it
    assert counts.get("train_backbone", 0) == sum(training(r) == "backbone" for r in runs)
    assert counts.get("zeroshot", 0) == sum(training(r) == "none" for r in runs)
    assert counts["prepare_dataset"] == len(config["datasets"])
    assert seconds < 60  # wall time follows the machine's load; this guards against blow-ups
    # the target (under 10 s; the leaderboard's 1,016 jobs the most) on the work snakemake itself did
    assert cpu_seconds < 10
    assert not (tmp_path / "results").exists()


def test_paper_numbers_are_carried():
    clipath = yaml.safe_load((REPO / "config/paper/clipath.yaml").read_text())
    rows = clipath["studies"]["clipath"]["paper"]["clipath_accuracy"]["rows"]
    assert ["pcam", "rfc", 0.1, 0.764, 0.9, 0.707, 0.792, 0.849] in rows
    pathclip = yaml.safe_load((REPO / "config/paper/pathclip.yaml").read_text())
    t1 = pathclip["studies"]["pathclip"]["paper"]["pathclip_zeroshot"]["rows"]
    assert len(t1) == 29 * 4
