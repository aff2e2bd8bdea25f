"""What the workflow must produce, derived from the config alone.

Pure Python (no torch import) so the Snakefile builds its DAG fast. The config is
checked against ``config/schema/config.schema.yaml`` and then for the references
a schema cannot express (a study naming an unknown dataset, ...); every problem
is reported as one line naming the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medtune.conditions import AUGMENTED, CONDITIONS, parse_condition

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema" / "config.schema.yaml"
FROZEN_METHODS = ("linear_probe", "rfc", "coop", "linear_probe_augmented", "rfc_augmented")  # on cached features
AUGMENTED_SUFFIX = "_augmented"  # the same method trained on clean + corruption-augmented features
TUNED_METHODS = ("finetune_caption", "finetune_label")  # train the encoders themselves
STUDY_CONDITIONS = {"clipath": ["clean"], "pubmedvision": ["clean"], "pathclip": CONDITIONS}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "zeroshot": {},
    # CLIP's protocol: C = 1/lambda over 1e-6..1e6, 8 values a decade (96 steps), chosen on validation
    "linear_probe": {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "grid", "max_iter": 1000},
    "coop": {
        "n_ctx": 16,
        "ctx_init": None,
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 50,
        "batch_size": 32,
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
    },
    "finetune": {
        "epochs": 20,
        "batch_size": 256,
        "lr": 1e-6,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "augment": False,
        "amp": True,
        "grad_accum": 1,
        "wise_alphas": [0.5],
    },
    "rfc": {
        "alphas": [0.2, 0.4, 0.6, 0.8, 1.0],
        "lr": 1e-4,
        "weight_decay": 5e-3,
        "epochs": 5,
        "batch_size": 32,
        "hidden_widths": ["d/4", 64, "d/4"],  # CLIP_RFC's CustomCLIP.fc; "d/N": feature width / N
        "final_relu": True,
    },
}
# the tables each study writes (medtune.tables.write_study_tables)
STUDY_TABLES = {
    "clipath": ["clipath_accuracy", "clipath_cost"],
    "pubmedvision": ["pubmedvision_topk"],
    "pathclip": ["pathclip_zeroshot", "pathclip_retrieval"],
}
DEFAULT_FRACTIONS = [0.1, 0.5, 1, 5, 10, 50]
DEFAULT_TEMPLATES = ["a histopathology image of {c}."]


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and value."""


@dataclass(frozen=True)
class Run:
    dataset: str
    method: str
    backbone: str
    seed: int | None = None
    fraction: str | None = None  # spelled as in paths: 0.1, 1, 50

    @property
    def setting(self) -> str:
        return "pretrained" if self.seed is None else f"seed{self.seed}/frac{self.fraction}"

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.method}/{self.backbone}/{self.setting}"


def format_fraction(fraction: float) -> str:
    return f"{float(fraction):g}"


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key given twice (plain YAML keeps the last silently)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"config file {node.start_mark.name}: key {key!r} given twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def check_config_file(path: str | Path) -> None:
    """Refuse duplicate keys, e.g. two datasets of the same name, which YAML would merge silently."""
    with open(path) as fh:
        yaml.load(fh, Loader=_UniqueKeyLoader)


def validate(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config with defaults filled in, or ConfigError naming the first problem."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config key {_key_path(err)}: {err.message}")
    config = copy.deepcopy(config)
    config.setdefault("results", "results")
    config.setdefault("device", "auto")
    config.setdefault("progress", True)
    config.setdefault("seeds", [1, 2, 3])
    methods = config.setdefault("methods", {})
    for name, defaults in METHOD_DEFAULTS.items():
        methods[name] = {**defaults, **methods.get(name, {})}
    for study_name, study in config["studies"].items():
        study.setdefault("fractions", DEFAULT_FRACTIONS)
        study.setdefault("seeds", config["seeds"])
        study.setdefault("conditions", list(STUDY_CONDITIONS[study_name]))
        if study["conditions"] == ["all"]:
            study["conditions"] = list(CONDITIONS)
    for dataset in config["datasets"].values():
        dataset.setdefault("prompts", {}).setdefault("templates", DEFAULT_TEMPLATES)
    _check_references(config)
    return config


def _check_references(config: dict[str, Any]) -> None:
    datasets, backbones = config["datasets"], config["backbones"]
    for study_name, study in config["studies"].items():
        for name in study["datasets"]:
            if name not in datasets:
                raise ConfigError(f"config key studies.{study_name}.datasets: unknown dataset {name!r}")
        for name in study["backbones"]:
            if name not in backbones:
                raise ConfigError(f"config key studies.{study_name}.backbones: unknown backbone {name!r}")
        for condition in study["conditions"]:
            _check_condition(condition, f"studies.{study_name}.conditions")
    for name, spec in backbones.items():
        pretrain = spec.get("pretrain")
        if pretrain and pretrain["dataset"] not in datasets:
            raise ConfigError(f"config key backbones.{name}.pretrain.dataset: unknown dataset {pretrain['dataset']!r}")
        if pretrain and (spec.get("pretrained") or spec.get("checkpoint")):
            raise ConfigError(f"config key backbones.{name}: 'pretrain' cannot be combined with 'pretrained'/'checkpoint'")


def _check_condition(condition: str, key: str) -> None:
    try:
        parse_condition(condition)
    except ValueError as err:
        raise ConfigError(f"config key {key}: {err}") from None


def runs(config: dict[str, Any]) -> list[Run]:
    """Every run any study needs, each once, in a stable order."""
    out: dict[str, Run] = {}
    for study in config["studies"].values():
        for dataset in study["datasets"]:
            for backbone in study["backbones"]:
                for method in study["methods"]:
                    if method == "zeroshot":
                        found = [Run(dataset, method, backbone)]
                    else:
                        found = [
                            Run(dataset, method, backbone, seed, format_fraction(f))
                            for seed in study["seeds"]
                            for f in study["fractions"]
                        ]
                    out.update({r.path: r for r in found})
    return list(out.values())


def base_method(method: str) -> str:
    return method.removesuffix(AUGMENTED_SUFFIX)


def train_conditions(config: dict[str, Any], dataset: str, backbone: str) -> list[str]:
    """Conditions of the train split: clean, plus the augmented set if a study trains on it."""
    for study in config["studies"].values():
        if dataset in study["datasets"] and backbone in study["backbones"]:
            if any(m.endswith(AUGMENTED_SUFFIX) for m in study["methods"]):
                return ["clean", AUGMENTED]
    return ["clean"]


def conditions_for(config: dict[str, Any], dataset: str, backbone: str, method: str | None = None) -> list[str]:
    """Test-time conditions, clean first: those of the studies that evaluate ``method`` on
    ``dataset`` x ``backbone`` (or, without a method, every condition the backbone must encode)."""
    found = ["clean"]
    for study in config["studies"].values():
        if dataset in study["datasets"] and backbone in study["backbones"]:
            if method is None or method in study["methods"]:
                found += [c for c in study["conditions"] if c not in found]
    return found


def fractions_for(config: dict[str, Any], dataset: str) -> list[str]:
    found: list[str] = []
    for study in config["studies"].values():
        if dataset in study["datasets"] and set(study["methods"]) - {"zeroshot"}:
            found += [format_fraction(f) for f in study["fractions"] if format_fraction(f) not in found]
    return sorted(found, key=float)


def seeds_for(config: dict[str, Any], dataset: str) -> list[int]:
    found: list[int] = []
    for study in config["studies"].values():
        if dataset in study["datasets"] and set(study["methods"]) - {"zeroshot"}:
            found += [s for s in study["seeds"] if s not in found]
    return found


def tables(config: dict[str, Any]) -> list[str]:
    names = [name for study in config["studies"] for name in STUDY_TABLES[study]]
    clipath = config["studies"].get("clipath")
    if clipath and clipath["conditions"] != ["clean"]:
        names.append("adapted_robustness")
    if config["studies"].get("pubmedvision", {}).get("paper", {}).get("pubmedvision_topk"):
        names.append("pubmedvision_paper")
    return names


def figures(config: dict[str, Any]) -> list[str]:
    found = []
    if "clipath" in config["studies"]:
        found += ["clipath_accuracy", "clipath_training_time", "clipath_confusion"]
    if "pathclip" in config["studies"]:
        found += ["pathclip_robustness", "corruption_gallery", "retrieval_examples"]
    return found
