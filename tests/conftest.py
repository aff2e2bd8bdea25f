import contextlib
import copy
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medtune import plan

REPO = Path(__file__).resolve().parents[1]

# The smallest config that still exercises every stage of the DAG.
SMALL_CONFIG = {
    "seeds": [1, 2],
    # a method from outside the package, as a user would add one (tests/toy_method.py)
    "method_modules": [str(Path(__file__).with_name("toy_method.py"))],
    "progress": False,
    "device": "cpu",
    "datasets": {
        "synth": {
            "source": "synthetic",
            "image_size": 32,
            # four of the nine tissues: 200 pretraining pairs teach a tiny backbone these, not all nine
            "classes": ["lymphocytes", "smooth muscle", "normal mucosa", "tumour epithelium"],
            "sizes": {"pretrain": 200, "train": 200, "val": 50, "test": 60},
        }
    },
    "backbones": {
        # encoded in batches of 32, so a kill can land between batches (tests/test_faults.py)
        "tiny": {"arch": "medtune-tiny", "encode_batch_size": 32, "pretrain": {"dataset": "synth", "epochs": 2, "batch_size": 64}},
        "tiny-untrained": {"arch": "medtune-tiny"},
    },
    "methods": {
        "rfc": {"alphas": [0.0, 0.5], "epochs": 3},
        "linear_probe": {"C_range": [0.1, 10.0], "steps_per_decade": 1},
        "coop": {"n_ctx": 2, "epochs": 2, "lr": 0.05},
        "knn": {"k": 5},
        "clip_adapter": {"epochs": 2, "lr": 0.05},
        "tip_adapter": {"search_step": [20, 20]},
        "tip_adapter_f": {"epochs": 2, "search_step": [20, 20]},
        "finetune": {"epochs": 2, "batch_size": 32, "lr": 1e-4, "wise_alphas": [0.5]},
        "clip_lora": {"iterations_per_shot": 1, "max_iterations": 4, "batch_size": 16},
        "rfc_augmented": {"base": "rfc", "train_conditions": "augmented"},
        # trained on the other suite: how it does on PathCLIP's blur it never saw (adapted_robustness)
        "linear_probe_aug_medmnistc": {"base": "linear_probe", "train_conditions": "medmnistc"},
        "finetune_caption": {"base": "finetune", "text": "caption"},
        "finetune_label": {"base": "finetune", "text": "label"},
        "lp_plus_plus": {"epochs": 30},
        "clap": {"epochs": 30},
        # one declaration: a refined run on each run of zero-shot and two few-shot methods
        "transclip": {"methods": ["zeroshot", "linear_probe", "tip_adapter"]},
        "lp_ft": {"probe": {"C_range": [0.1, 10.0], "steps_per_decade": 1}, "epochs": 2, "batch_size": 32, "lr": 1e-3},
        # soups of the two fine-tunings of the pubmedvision study's run
        "soup": {"methods": ["finetune_caption", "finetune_label"], "label": "greedy soup"},
        "soup_uniform": {"base": "soup", "recipe": "uniform", "label": "uniform soup"},
    },
    "studies": {
        "clipath": {"datasets": ["synth"], "backbones": ["tiny"], "fractions": [5, 50], "shots": [2],
                    "methods": ["zeroshot", "linear_probe", "knn", "simpleshot", "rfc", "clip_adapter", "tip_adapter", "tip_adapter_f",
                                "coop", "rfc_augmented", "clip_lora", "toy_method", "linear_probe_aug_medmnistc", "lp_plus_plus", "clap",
                                "transclip"],
                    "conditions": ["clean", "blur-2", "motion_blur-2"]},
        "pubmedvision": {
            "datasets": ["synth"],
            "backbones": ["tiny"],
            "methods": ["zeroshot", "finetune_caption", "finetune_label", "clip_lora", "lp_ft", "soup", "soup_uniform"],
            "fractions": [50],
            "seeds": [1],
        },
        "pathclip": {
            "datasets": ["synth"],
            "backbones": ["tiny", "tiny-untrained"],
            "methods": ["zeroshot"],
            "conditions": ["clean", "blur-2", "hue--2", "markup-1"],
        },
        "medmnistc": {
            "datasets": ["synth"],
            "backbones": ["tiny", "tiny-untrained"],
            "methods": ["zeroshot"],
            "conditions": ["clean", "jpeg_compression-3", "hed_shift-4", "blur-2"],
        },
    },
}


def _core_config() -> dict:
    """SMALL_CONFIG cut to one method of each kind for the tests that run the workflow again from
    scratch (kills and resumes, SLURM): zero-shot, a scikit-learn fit (linear probe), a torch fit
    (RFC), a fit that runs the text encoder (CoOp: a GPU job on SLURM) and both fine-tunings;
    the PathCLIP study as it is, no MedMNIST-C study. About half of SMALL_CONFIG's jobs; every
    result it has is one SMALL_CONFIG's run has too, compared row by row with ``small_run``'s."""
    config = copy.deepcopy(SMALL_CONFIG)
    config["studies"]["clipath"]["methods"] = ["zeroshot", "linear_probe", "rfc", "coop"]
    config["studies"]["pubmedvision"]["methods"] = ["zeroshot", "finetune_caption", "finetune_label"]
    del config["studies"]["medmnistc"]
    return config


CORE_CONFIG = _core_config()
# the last table the tables job writes: as a target it builds every run, metric and table of the
# core config, not its figures
CORE_LAST_TABLE = plan.tables(plan.validate(copy.deepcopy(CORE_CONFIG)))[-1]
CORE_TABLES_TARGET = f"results/tables/{CORE_LAST_TABLE}.tex"


def assert_metrics_in(ours_root: Path, theirs_root: Path) -> pd.DataFrame:
    """Every row of ``ours_root``'s metrics.csv is in ``theirs_root``'s, with the same value to the
    bit (a run's numbers do not depend on which other runs the config has); returns ours."""
    ours = pd.read_csv(ours_root / "results" / "metrics.csv")
    theirs = pd.read_csv(theirs_root / "results" / "metrics.csv")
    assert list(ours.columns) == list(theirs.columns)
    keys = [c for c in ours.columns if c != "value"]
    assert not theirs.duplicated(keys).any()
    merged = ours.merge(theirs, on=keys, how="left", suffixes=("", "_theirs"), indicator=True)
    missing = merged[merged["_merge"] != "both"]
    assert missing.empty, f"rows not in {theirs_root}:\n{missing[keys].head()}"
    same = (merged["value"] == merged["value_theirs"]) | (merged["value"].isna() & merged["value_theirs"].isna())
    assert same.all(), merged.loc[~same, keys + ["value", "value_theirs"]].head()
    return ours


def assert_core_run_matches(core_root: Path, small_root: Path) -> None:
    """A run of CORE_CONFIG equals the small run wherever they overlap: every metric row, a run of
    every method the core config has, and the tables of the study it keeps whole (PathCLIP's)."""
    ours = assert_metrics_in(core_root, small_root)
    assert set(ours["method"]) >= {m for study in CORE_CONFIG["studies"].values() for m in study["methods"]}
    for table in ("pathclip_retrieval.csv", "pathclip_zeroshot.csv"):
        assert (core_root / "results/tables" / table).read_bytes() == (small_root / "results/tables" / table).read_bytes()


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """Job stats table of a snakemake (dry) run: {rule: count}."""
    block = output.split("Job stats:", 1)
    if len(block) < 2:
        return {}
    counts = {}
    for line in block[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The small workflow, run once for the whole session."""
    workdir = tmp_path_factory.mktemp("small")
    write_config(workdir, SMALL_CONFIG)
    snakemake(workdir)
    return workdir


@contextlib.contextmanager
def serve_locally(handler):
    """An HTTP server for ``handler`` on 127.0.0.1 in a thread; yields its base URL."""
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
