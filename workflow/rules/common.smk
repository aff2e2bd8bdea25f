# Paths, wildcard constraints and input functions shared by the rule files. What runs
# exist, which methods and figures there are, comes from medtune.plan and the registries.

import os
import re
from pathlib import Path

from medtune import devices, protocol
from medtune import studies as study_registry
from medtune.data import inventory
from medtune.data import sources as data_sources
from medtune.records import MANIFEST

RESULTS = config["results"]
RUNS = plan.runs(config)
RUN_BY_PATH = {r.path: r for r in RUNS}
# a train_frozen job's runs, looked up per job: a scan of every run per job was seconds of DAG
# building for the leaderboard's ~11,000 runs
RUNS_BY_SEED = {}
for _run in RUNS:
    RUNS_BY_SEED.setdefault((_run.dataset, _run.method, _run.backbone, _run.seed), []).append(_run)
DATASETS = config["datasets"]
BACKBONES = config["backbones"]
METHODS = config["methods"]
TABLES = plan.tables(config)
FIGURES = plan.figures(config)
# runs whose jobs keep val and test logits (the conformal and centre-shift tables read them)
LOGIT_RUNS = plan.logit_runs(config)


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
    staged=one_of(sorted({r.method for r in RUNS if plan.stage_of(config, r.method)})),
    souped=one_of(plan.methods_of(config, "soup")),
    setting=r"pretrained|seed\d+",


def dataset_files(dataset):
    return {
        "images": f"{RESULTS}/data/{dataset}/images.npy",
        "samples": f"{RESULTS}/data/{dataset}/samples.csv",
    }


def source_state(wildcards):
    """What the dataset's files hold, as far as it matters for rerunning (medtune.data.inventory);
    a folder the workflow cannot use (a class name that is not UTF-8) stops it here, in one line."""
    try:
        return inventory.state(DATASETS[wildcards.dataset], f"{RESULTS}/data/{wildcards.dataset}")
    except ValueError as err:
        sys.exit(f"medtune: datasets.{wildcards.dataset}: {err}")


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
    return RUNS_BY_SEED.get((wildcards.dataset, wildcards.trained, wildcards.backbone, int(wildcards.seed)), [])


def class_text_input(method, wildcards):
    """The class-prompt features, for a method that requires a text tower (then its backbone
    has one: the plan runs no other pair); nothing for the others, whose runs stay as they
    are when a prompt changes."""
    if "text_tower" in METHODS[method]["requires"]:
        return text_features(wildcards.backbone, wildcards.dataset)
    return []


def trained_inputs(wildcards):
    feats = lambda split: features_dir(wildcards.backbone, wildcards.dataset, split)
    return {
        "train": feats("train"),
        "val": feats("val"),
        "text": class_text_input(wildcards.trained, wildcards),
        "subsets": [subset_input(r) for r in seed_runs(wildcards)],
        "samples": dataset_files(wildcards.dataset)["samples"],
        "test": feats("test"),
        "weights": backbone_weights(wildcards.backbone) if METHODS[wildcards.trained]["needs_text_encoder"] else [],
        # named only for methods that run the text encoder: a profile can ask for a GPU by it
        **(
            {"text_encoder": text_features(wildcards.backbone, wildcards.dataset)}
            if METHODS[wildcards.trained]["needs_text_encoder"]
            else {}
        ),
    }


def stage_runs(wildcards):
    """The runs one train_transductive job makes: every run of its stage on one seed of its base
    (or the one run on a base without training data: setting ``pretrained``)."""
    seed = None if wildcards.setting == "pretrained" else int(wildcards.setting.removeprefix("seed"))
    key = (wildcards.dataset, wildcards.staged, wildcards.backbone, seed)
    return [r for r in RUNS if (r.dataset, r.method, r.backbone, r.seed) == key]


def stage_method(staged):
    """What a train_transductive job needs of its stage's configuration (its ``methods`` aside: each
    job refines one base, named in its runs' method)."""
    name = plan.stage_of(config, staged)[1]
    method = {k: METHODS[name][k] for k in ("module", "train_conditions", "needs_text_encoder")}
    return {"name": name, **method, "params": {k: v for k, v in METHODS[name]["params"].items() if k != "methods"}}


def stage_inputs(wildcards):
    """A stage's base runs (the same seed and subsets, the base's method), the cached features
    and the subsets its runs' support images come from."""
    runs = stage_runs(wildcards)
    base, _ = plan.stage_of(config, wildcards.staged)
    base_runs = [plan.Run(r.dataset, base, r.backbone, r.seed, r.fraction, r.shots) for r in runs]
    feats = lambda split: features_dir(wildcards.backbone, wildcards.dataset, split)
    return {
        "base": all_run_outputs(base_runs),
        "train": feats("train"),
        "val": feats("val"),
        "test": feats("test"),
        "text": text_features(wildcards.backbone, wildcards.dataset),
        "samples": dataset_files(wildcards.dataset)["samples"],
        "subsets": [subset_input(r) for r in runs if r.seed is not None],
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


def soup_run(wildcards):
    """The configured run a train_soup job makes."""
    path = f"{wildcards.dataset}/{wildcards.souped}/{wildcards.backbone}/seed{wildcards.seed}/{wildcards.subset}"
    if path not in RUN_BY_PATH:
        raise ValueError(f"no study of the config makes the run {path}")
    return RUN_BY_PATH[path]


def soup_inputs(wildcards):
    """A soup's ingredients: the runs of the methods its ``methods`` names on the same seed and subset."""
    run = soup_run(wildcards)
    ingredients = [
        plan.Run(run.dataset, m, run.backbone, run.seed, run.fraction, run.shots)
        for m in METHODS[run.method]["params"]["methods"]
    ]
    return {
        **dataset_files(wildcards.dataset),
        "weights": backbone_weights(wildcards.backbone),
        "ingredients": [run_output(r) for r in ingredients],
    }


def zeroshot_inputs(wildcards):
    # a backbone without a text tower: its embedding's retrieval and invariance alone (no logits)
    has_text = "text_tower" in plan.backbone_capabilities(BACKBONES[wildcards.backbone])
    keeps_logits = has_text and plan.Run(wildcards.dataset, "zeroshot", wildcards.backbone).path in LOGIT_RUNS
    return {
        "text": text_features(wildcards.backbone, wildcards.dataset) if has_text else [],
        "test": features_dir(wildcards.backbone, wildcards.dataset, "test"),
        "samples": dataset_files(wildcards.dataset)["samples"],
        **({"val": features_dir(wildcards.backbone, wildcards.dataset, "val")} if keeps_logits else {}),
    }


def run_output(run):
    """What a run's producing job declares: a frozen method's or a stage's job writes the folder
    of its seed (a stage on zero-shot: the run's own folder); the others write the run's manifest
    beside its files."""
    training = plan.training_of(config, run.method)
    if training == "transductive" and run.seed is None:
        return run_dir(run)
    if training in ("frozen", "transductive"):
        return os.path.dirname(run_dir(run))
    return f"{run_dir(run)}/{MANIFEST}"


def all_run_outputs(runs=RUNS):
    return sorted({run_output(r) for r in runs})


def evaluated_test_features():
    """The test features every (dataset, backbone) pair's frozen-backbone runs are evaluated on
    (backbone training encodes its test split itself, with its own encoder)."""
    pairs = {
        (dataset, backbone)
        for study in config["studies"].values()
        for dataset in study["datasets"]
        for backbone in study["backbones"]
        if any(plan.runs_on(config, m, backbone) and METHODS[m]["training"] != "backbone" for m in study["methods"])
    }
    return sorted(features_dir(backbone, dataset, "test") for dataset, backbone in pairs)


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
        "robustness_index": robustness_index_outputs(),
    }
    names = {i for f in study_registry.figures(study, config_study) for i in f.inputs}
    return {name: available[name] for name in available if name in names}


def caption_file(figure):
    """A figure's caption (from its study's declaration) in the .rst file Snakemake's report reads,
    written under .snakemake/ when the workflow is parsed: a report caption is a file per output,
    and one job writes several figures."""
    _, output = study_registry.find_figure(figure)
    path = Path(".snakemake", "medtune", "captions", f"{figure}.rst").resolve()
    text = f"{{% raw %}}{output.caption}{{% endraw %}}\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def gpu_request(wildcards):
    """One GPU for heavy jobs when the configured device is CUDA; none on a CPU-only setup."""
    return devices.gpu_slots(config["device"])


# the robustness studies beyond corruptions (robustness.smk)
ADVERSARIAL = config["studies"].get("adversarial")
CENTRE_SHIFT = config["studies"].get("centre_shift")


def attack_outputs():
    """One folder per dataset x attacked method x backbone x protocol of the adversarial study."""
    if not ADVERSARIAL:
        return []
    return [
        f"{RESULTS}/attacks/{d}/{m}/{b}/{p}"
        for d in ADVERSARIAL["datasets"]
        for m in ADVERSARIAL["methods"]
        for b in ADVERSARIAL["backbones"]
        for p in ADVERSARIAL["attacks"]
    ]


def attacked_runs(wildcards):
    key = (wildcards.dataset, wildcards.attacked, wildcards.backbone)
    return [r for r in plan.study_runs(config, "adversarial") if (r.dataset, r.method, r.backbone) == key]


def robustness_index_outputs():
    if not CENTRE_SHIFT:
        return []
    return [
        f"{RESULTS}/robustness_index/{d}/{b}.json" for d in CENTRE_SHIFT["datasets"] for b in CENTRE_SHIFT["backbones"]
    ]
