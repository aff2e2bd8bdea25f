# Paths, wildcard constraints and input functions shared by the rule files.

import os
import re

RESULTS = config["results"]
RUNS = plan.runs(config)
DATASETS = config["datasets"]
BACKBONES = config["backbones"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    backbone=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    split=r"pretrain|train|val|test",
    seed=r"\d+",
    fraction=r"\d+(\.\d+)?",
    trained="|".join(plan.FROZEN_METHODS),
    tuned="|".join(plan.TUNED_METHODS),


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


def trained_fractions(wildcards):
    """The fractions one train_frozen job fits: those of the studies' runs of its method and seed."""
    return [
        r.fraction
        for r in RUNS
        if (r.dataset, r.method, r.backbone, str(r.seed)) == (wildcards.dataset, wildcards.trained, wildcards.backbone, wildcards.seed)
    ]


def trained_inputs(wildcards):
    feats = lambda split: features_dir(wildcards.backbone, wildcards.dataset, split)
    return {
        "train": feats("train"),
        "val": feats("val"),
        "text": f"{RESULTS}/features/{wildcards.backbone}/{wildcards.dataset}/text.npz",
        "subsets": [
            f"{RESULTS}/subsets/{wildcards.dataset}/seed{wildcards.seed}/frac{fraction}.csv"
            for fraction in trained_fractions(wildcards)
        ],
        "samples": dataset_files(wildcards.dataset)["samples"],
        "test": feats("test"),
        "weights": backbone_weights(wildcards.backbone) if wildcards.trained == "coop" else [],
    }


def finetune_inputs(wildcards):
    return {
        **dataset_files(wildcards.dataset),
        "weights": backbone_weights(wildcards.backbone),
        "subset": f"{RESULTS}/subsets/{wildcards.dataset}/seed{wildcards.seed}/frac{wildcards.fraction}.csv",
    }


def evaluate_inputs(wildcards):
    return {
        "text": f"{RESULTS}/features/{wildcards.backbone}/{wildcards.dataset}/text.npz",
        "test": features_dir(wildcards.backbone, wildcards.dataset, "test"),
        "samples": dataset_files(wildcards.dataset)["samples"],
    }


def run_output(run):
    """What a run's producing job declares: a frozen method's job writes the folder of its seed."""
    if run.method in plan.FROZEN_METHODS:
        return os.path.dirname(run_dir(run))
    return f"{run_dir(run)}/metrics.csv"


def all_run_outputs():
    return sorted({run_output(r) for r in RUNS})


def all_metrics():
    return [f"{run_dir(r)}/metrics.csv" for r in RUNS]


def all_train_records():
    return [f"{run_dir(r)}/train.json" for r in RUNS if r.seed is not None]


TABLES = plan.tables(config)


def all_outputs():
    tables = [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md", "tex")]
    return tables + [f"{RESULTS}/figures/{name}.{ext}" for name in plan.figures(config) for ext in ("png", "pdf")]


def confusion_runs():
    """The CLIPath study's frozen-backbone runs (zero-shot included) on its first dataset and
    backbone: the confusion figure picks the most accurate."""
    study = config["studies"]["clipath"]
    dataset, backbone = study["datasets"][0], study["backbones"][0]
    return [
        r
        for r in RUNS
        if r.dataset == dataset and r.backbone == backbone and r.method in ("zeroshot", *plan.FROZEN_METHODS)
        and r.method in study["methods"]
    ]


def confusion_inputs(wildcards):
    study = config["studies"]["clipath"]
    dataset, backbone = study["datasets"][0], study["backbones"][0]
    return {
        "metrics": f"{RESULTS}/metrics.csv",
        "runs": sorted({run_output(r) for r in confusion_runs()}),
        "test": features_dir(backbone, dataset, "test"),
        "samples": dataset_files(dataset)["samples"],
    }


def retrieval_example_inputs(wildcards):
    study = config["studies"]["pathclip"]
    dataset, backbone = study["datasets"][0], study["backbones"][0]
    return {"test": features_dir(backbone, dataset, "test"), **dataset_files(dataset)}


def gpu_request(wildcards):
    """One GPU for heavy jobs when the configured device is CUDA; none on a CPU-only setup."""
    device = config["device"]
    if device == "cpu":
        return 0
    if device == "auto":
        import shutil

        return 1 if shutil.which("nvidia-smi") else 0
    return 1
