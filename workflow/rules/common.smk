# Paths, wildcard constraints and input functions shared by the rule files. What runs
# exist, which methods and figures there are, comes from medtune.plan and the registries.

import os
import re
from pathlib import Path

from medtune import devices
from medtune import studies as study_registry
from medtune.records import MANIFEST

RESULTS = config["results"]
RUNS = plan.runs(config)
RUN_BY_PATH = {r.path: r for r in RUNS}
DATASETS = config["datasets"]
BACKBONES = config["backbones"]
METHODS = config["methods"]
TABLES = plan.tables(config)
FIGURES = plan.figures(config)


def one_of(names):
    """A wildcard constraint matching exactly these names (never an empty alternation)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    backbone=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    split=r"pretrain|train|val|test",
    seed=r"\d+",
    fraction=r"\d+(\.\d+)?",
    shots=r"\d+",
    subset=r"frac\d+(\.\d+)?|shots\d+",
    trained=one_of(plan.methods_of(config, "frozen")),
    tuned=one_of(plan.methods_of(config, "backbone")),


def dataset_files(dataset):
    return {
        "images": f"{RESULTS}/data/{dataset}/images.npy",
        "samples": f"{RESULTS}/data/{dataset}/samples.csv",
    }


def backbone_weights(backbone):
    """The checkpoint the pipeline's own pretraining makes, or nothing for external weights."""
    if BACKBONES[backbone].get("pretrain"):
        return f"{RESULTS}/backbones/{backbone}/weights.pt"
    return []


def pretrain_inputs(wildcards):
    spec = BACKBONES[wildcards.backbone].get("pretrain")
    if not spec:
        raise ValueError(f"backbone {wildcards.backbone!r} has no 'pretrain' section")
    return dataset_files(spec["dataset"])


def features_dir(backbone, dataset, split):
    return f"{RESULTS}/features/{backbone}/{dataset}/{split}"


def text_features(backbone, dataset):
    return f"{RESULTS}/features/{backbone}/{dataset}/text.npz"


def subset_file(run):
    """The training subset of a run: ``frac{fraction}.csv`` or ``shots{k}.csv`` of its seed."""
    return f"{RESULTS}/subsets/{run.dataset}/seed{run.seed}/{run.subset}.csv"


def subset_input(run):
    """A run's subset as a training rule's input. The subsample job rewrites every subset of its
    dataset when a fraction, shot count or seed is added anywhere, with the same contents for the
    existing ones (each is a prefix of its seed's fixed permutation), so their new mtimes must not
    rerun finished training: the input is ``ancient``, and what does change a subset (the
    dataset's samples, its class_balance) reaches the training rules as an input or a param."""
    return ancient(subset_file(run))


def encode_inputs(wildcards):
    return {**dataset_files(wildcards.dataset), "weights": backbone_weights(wildcards.backbone)}


def split_conditions(wildcards):
    if wildcards.split == "test":
        return plan.conditions_for(config, wildcards.dataset, wildcards.backbone)
    if wildcards.split == "train":
        return plan.train_conditions(config, wildcards.dataset, wildcards.backbone)
    return ["clean"]


def run_dir(run):
    return f"{RESULTS}/runs/{run.path}"


def seed_runs(wildcards):
    """The runs one train_frozen job makes: every fraction and shot count of its method and seed."""
    key = (wildcards.dataset, wildcards.trained, wildcards.backbone, int(wildcards.seed))
    return [r for r in RUNS if (r.dataset, r.method, r.backbone, r.seed) == key]


def trained_inputs(wildcards):
    feats = lambda split: features_dir(wildcards.backbone, wildcards.dataset, split)
    return {
        "train": feats("train"),
        "val": feats("val"),
        "text": text_features(wildcards.backbone, wildcards.dataset),
        "subsets": [subset_input(r) for r in seed_runs(wildcards)],
        "samples": dataset_files(wildcards.dataset)["samples"],
        "test": feats("test"),
        "weights": backbone_weights(wildcards.backbone) if METHODS[wildcards.trained]["needs_text_encoder"] else [],
        # named only for methods that run the text encoder: a profile can ask for a GPU by it
        **({"text_encoder": text_features(wildcards.backbone, wildcards.dataset)} if METHODS[wildcards.trained]["needs_text_encoder"] else {}),
    }


def backbone_run(wildcards):
    """The configured run a train_backbone job makes (looked up, not read from the path)."""
    path = f"{wildcards.dataset}/{wildcards.tuned}/{wildcards.backbone}/seed{wildcards.seed}/{wildcards.subset}"
    if path not in RUN_BY_PATH:
        raise ValueError(f"no study of the config makes the run {path}")
    return RUN_BY_PATH[path]


def tuned_inputs(wildcards):
    return {
        **dataset_files(wildcards.dataset),
        "weights": backbone_weights(wildcards.backbone),
        "subset": subset_input(backbone_run(wildcards)),
    }


def zeroshot_inputs(wildcards):
    return {
        "text": text_features(wildcards.backbone, wildcards.dataset),
        "test": features_dir(wildcards.backbone, wildcards.dataset, "test"),
        "samples": dataset_files(wildcards.dataset)["samples"],
    }


def run_output(run):
    """What a run's producing job declares: a frozen method's job writes the folder of its
    seed; the others write the run's manifest beside its files."""
    if METHODS[run.method]["training"] == "frozen":
        return os.path.dirname(run_dir(run))
    return f"{run_dir(run)}/{MANIFEST}"


def all_run_outputs(runs=RUNS):
    return sorted({run_output(r) for r in runs})


def all_outputs():
    tables = [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md", "tex")]
    return tables + [f"{RESULTS}/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]


def study_figures(study):
    """The figures a configured study makes, in its declaration's order."""
    return [f.name for f in study_registry.figures(study, config["studies"][study])]


FIGURE_STUDIES = [study for study in config["studies"] if study_figures(study)]


def study_figure_inputs(study):
    """The files a study's figures declare (medtune.studies.FIGURE_INPUTS), all of them for the
    one job that draws them: images, features and runs are those of the study's first dataset and
    backbone (every run, those trained inside the backbone included: their manifests list their
    own weights)."""
    config_study = config["studies"][study]
    dataset, backbone = config_study["datasets"][0], config_study["backbones"][0]
    runs = [r for r in RUNS if (r.dataset, r.backbone) == (dataset, backbone) and r.method in config_study["methods"]]
    available = {
        "metrics": f"{RESULTS}/metrics.csv",
        "costs": f"{RESULTS}/costs.csv",
        "runs": all_run_outputs(runs),
        "images": dataset_files(dataset)["images"],
        "samples": dataset_files(dataset)["samples"],
        "test_features": features_dir(backbone, dataset, "test"),
    }
    names = {i for f in study_registry.figures(study, config_study) for i in f.inputs}
    return {name: available[name] for name in available if name in names}


def caption_file(figure):
    """A figure's caption (from its study's declaration) in the .rst file Snakemake's report reads,
    written under .snakemake/ when the workflow is parsed: a report caption is a file per output,
    and one job writes several figures."""
    _, output = study_registry.find_figure(figure)
    path = Path(".snakemake", "medtune", "captions", f"{figure}.rst").resolve()
    text = "{% raw %}" + output.caption + "{% endraw %}\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def gpu_request(wildcards):
    """One GPU for heavy jobs when the configured device is CUDA; none on a CPU-only setup."""
    return devices.gpu_slots(config["device"])
