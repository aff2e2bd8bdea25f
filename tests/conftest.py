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
        # vision-only (timm, no text tower): the plan routes it to the methods that need image features alone
        "tiny-vit": {"family": "timm", "model": "medtune-tiny-vit"},
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
            # the reference backbone (BE, rBE) is the last: tiny-untrained
            "backbones": ["tiny", "tiny-vit", "tiny-untrained"],
            "methods": ["zeroshot"],
            "conditions": ["clean", "jpeg_compression-3", "hed_shift-4", "blur-2"],
        },
        # robustness beyond corruptions, cut to a few images and steps
        "adversarial": {"datasets": ["synth"], "backbones": ["tiny"], "methods": ["zeroshot", "linear_probe"], "fractions": [50],
                        "seeds": [1], "attack_images": 16, "attacks": {"thunder": {}, "tecoa": {"steps": 2}}},
        "centre_shift": {"datasets": ["synth"], "backbones": ["tiny", "tiny-untrained"], "methods": ["zeroshot"], "bootstrap": 50},
        "conformal": {"datasets": ["synth"], "backbones": ["tiny"], "methods": ["zeroshot", "linear_probe", "rfc"], "fractions": [50],
                      "conditions": ["clean", "blur-2"]},
        # a text backbone and a vision-only one side by side: zero-shot classification and CoOp are
        # skipped on tiny-vit (one line each at DAG build, "—" in the tables); tiny's runs are clipath's
        "leaderboard": {
            "datasets": ["synth"],
            "backbones": ["tiny", "tiny-vit"],
            "methods": ["zeroshot", "linear_probe", "knn", "simpleshot", "coop"],
            "fractions": [5, 50],
            "shots": [2],
            "conditions": ["clean", "blur-2"],
        },
    },
}


def _core_config() -> dict:
    """SMALL_CONFIG cut to one method of each kind for the tests that run the workflow again from
    scratch (kills and resumes, SLURM): zero-shot, a scikit-learn fit (linear probe), a torch fit
    (RFC), a fit that runs the text encoder (CoOp: a GPU job on SLURM) and both fine-tunings;
    the PathCLIP study as it is, no MedMNIST-C study, no leaderboard (nor its vision-only backbone) nor the studies of robustness beyond corruptions. About half of SMALL_CONFIG's jobs; every
    result it has is one SMALL_CONFIG's run has too, compared row by row with ``small_run``'s."""
    config = copy.deepcopy(SMALL_CONFIG)
    config["studies"]["clipath"]["methods"] = ["zeroshot", "linear_probe", "rfc", "coop"]
    config["studies"]["pubmedvision"]["methods"] = ["zeroshot", "finetune_caption", "finetune_label"]
    for study in ("medmnistc", "leaderboard", "adversarial", "centre_shift", "conformal"):
        del config["studies"][study]
    del config["backbones"]["tiny-vit"]
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
    result = snakemake(workdir)
    # what the run said when it built its DAG (which pairs it skipped), for the routing tests
    (workdir / "snakemake.stderr").write_text(result.stderr)
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


@contextlib.contextmanager
def small_filesystem(mount: Path, size: str):
    """A tmpfs of ``size`` (e.g. ``1m``) mounted at ``mount`` for a full-disk test; the test is
    skipped, saying why, where this user cannot mount one (CI runs as root)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root or CAP_SYS_ADMIN needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, leave: int) -> Path:
    """Fill the file system of ``mount`` to ``leave`` bytes free; the filler file, to free the space again."""
    filler = mount / "filler"
    st = os.statvfs(mount)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


# --- a Hugging Face hub cache written by the test (hf-hub: ids without a network) -------------


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails: a loader that tried to download would say so."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A Hugging Face hub cache folder, with the hub switched to offline mode.

    huggingface_hub reads its environment once on import, so its constants are
    patched as well as the variables.
    """
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    for var, value in {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(var, value)
        monkeypatch.setattr(hub, var, value if var == "HF_HUB_CACHE" else True)
    return cache


def put_in_hub(cache, repo, files):
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for name, write in files.items():
        write(snapshot / name)
