"""What the workflow must produce, derived from the config alone.

Pure Python (no torch import) so the Snakefile builds its DAG fast. The config is
checked against ``config/schema/config.schema.yaml`` and then for the references
a schema cannot express (a study naming an unknown dataset, ...); every problem
is reported as one line naming the key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medtune import backbones as backbone_registry
from medtune import methods as method_registry
from medtune import studies as study_registry
from medtune.conditions import ALL, SUITES, TRAIN_CONDITIONS, augmented_condition, expand_conditions, parse_condition
from medtune.former_keys import former_method, former_param
from medtune.methods import STAGE_PARAM
from medtune.registry import RegistryError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema" / "config.schema.yaml"
DEFAULT_FRACTIONS = [0.1, 0.5, 1, 5, 10, 50]
DEFAULT_TEMPLATES = ["a histopathology image of {c}."]
# keys of a config method entry that are not hyperparameters
ENTRY_KEYS = {
    "base": {"type": "string", "description": "the registered method this entry configures (default: the entry's name)"},
    "train_conditions": {
        "enum": list(TRAIN_CONDITIONS),
        "description": "a suite (pathclip, medmnistc, all; augmented = pathclip): train on clean + that suite's corruption-augmented features",
    },
    "label": {"type": "string", "description": "how tables and figures name it"},
}


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and value."""


@dataclass(frozen=True)
class Run:
    """One run's identity. It travels into the job that makes the run as :meth:`labels`,
    and the job writes it into every file it makes, so nothing parses a path back."""

    dataset: str
    method: str
    backbone: str
    seed: int | None = None
    fraction: str | None = None  # spelled as in paths: 0.1, 1, 50
    shots: int | None = None  # images per class, instead of a fraction

    @property
    def subset(self) -> str:
        """The training subset's name: ``frac{fraction}`` or ``shots{k}``."""
        return f"shots{self.shots}" if self.shots is not None else f"frac{self.fraction}"

    @property
    def setting(self) -> str:
        return "pretrained" if self.seed is None else f"seed{self.seed}/{self.subset}"

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.method}/{self.backbone}/{self.setting}"

    def labels(self) -> dict[str, Any]:
        """The columns every metric row and record of the run carries."""
        return {
            "dataset": self.dataset,
            "method": self.method,
            "backbone": self.backbone,
            "seed": self.seed,
            "fraction": None if self.fraction is None else float(self.fraction),
            "shots": self.shots,
        }


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


# top-level keys a config may leave out: the schema's default fills them in
TOP_LEVEL_DEFAULTS = ("device", "progress", "seeds", "model_threads", "model_cores")


def validate(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config with defaults filled in and every method entry resolved, or ConfigError
    naming the first problem.

    ``config["methods"][name]`` becomes ``{base, module, training, needs_text_encoder,
    requires, train_conditions, label, order, params}``: a variant (an entry with ``base``) takes
    the base method's defaults, then the base's own config entry, then its own keys.
    """
    import jsonschema

    try:
        registered = method_registry.registered(config.get("method_modules", []) if isinstance(config, dict) else [])
    except RegistryError as err:
        raise ConfigError(f"config key method_modules: {err}") from None
    _check_finite(config)
    if problem := backbone_registry.config_problem(config.get("backbones") if isinstance(config, dict) else None):
        raise ConfigError(problem)
    schema = _schema(yaml.safe_load(schema_path.read_text()), config, registered)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(former_param(config.get("methods")) or f"config key {_key_path(err)}: {err.message}")
    from medtune.data.sources import config_problem  # each source declares the dataset keys it honours

    if problem := config_problem(config["datasets"]):
        raise ConfigError(problem)
    config = copy.deepcopy(config)
    config["results"] = _results_folder(config.get("results", "results"))
    for key in TOP_LEVEL_DEFAULTS:  # the schema's defaults, as the schema states them
        config.setdefault(key, copy.deepcopy(schema["properties"][key]["default"]))
    config["methods"] = _resolve_methods(config.get("methods", {}), registered)
    for study_name, study in config["studies"].items():
        _fill_settings(study, study_registry.registered()[study_name].defaults, f"studies.{study_name}")
        # a study that gives shots alone trains on shots alone
        study.setdefault("fractions", [] if study.get("shots") else DEFAULT_FRACTIONS)
        study.setdefault("shots", [])
        study.setdefault("seeds", config["seeds"])
        study.setdefault("conditions", list(study_registry.registered()[study_name].conditions))
        study["conditions"] = expand_conditions(study["conditions"])
    for dataset in config["datasets"].values():
        dataset.setdefault("prompts", {}).setdefault("templates", DEFAULT_TEMPLATES)
    _check_references(config)
    for study in config["studies"].values():
        # what the tables show as "—" (medtune.tables.skipped_rows); the plan leaves these runs out
        study["skipped"] = [skip.record() for skip in _study_skips(config, study)]
    _other_stage_runs(config)
    return config


def _results_folder(results: str) -> str:
    """``results`` with ``~`` expanded (Snakemake would make a folder named ``~``), refused when
    it or a folder on its way is a file: every job would fail on it after the DAG was built."""
    if not results.strip():
        raise ConfigError("config key results: empty; name the folder for the results (default: results)")
    expanded = str(Path(results).expanduser())
    for part in (Path(expanded), *Path(expanded).parents):
        if part.is_dir():
            break
        if part.exists() or part.is_symlink():
            what = "a broken link" if not part.exists() else "a file"
            raise ConfigError(f"config key results: {results!r} cannot be the results folder: {part} is {what}, not a folder")
    return expanded


def completed_schema(config: Any = None, schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The JSON schema a config is validated against, as :func:`validate` completes it: each
    method entry takes its base method's declared parameters, ``studies`` the registered
    studies (with no config: every registered method). The configuration reference is made
    from it (:mod:`medtune.docs`)."""
    config = config if isinstance(config, dict) else {}
    registered = method_registry.registered(config.get("method_modules", []))
    return _schema(yaml.safe_load(schema_path.read_text()), config, registered)


def _fill_settings(study: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """A study's own settings, defaults filled in. A setting that names entries (the adversarial study's
    ``attacks: {tecoa: {steps: 100}}``) keeps the entries named, each completed from the default entry
    of its name; an entry of another name gives every field itself."""
    for key, default in defaults.items():
        if key not in study:
            study[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and default and all(isinstance(v, dict) for v in default.values()):
            fields = set().union(*default.values())
            study[key] = {name: {**default.get(name, {}), **(given or {})} for name, given in study[key].items()}
            for name, entry in study[key].items():
                if missing := sorted(fields - set(entry)):
                    raise ConfigError(f"config key {where}.{key}.{name}: {', '.join(missing)} not given "
                                      f"(only {', '.join(default)} take defaults)")


def _other_stage_runs(config: dict[str, Any]) -> None:
    """``study["other_stage_runs"]``: the runs another study's stage makes on this study's methods
    (``zeroshot+transclip`` for a study that runs zero-shot but not TransCLIP). Their rows share
    the base's dataset and backbone and its name before the "+", as a WiSE-FT mix of the base's
    would; the study's tables leave them out (:func:`medtune.tables.of_study`)."""
    refined = {
        f"{base}+{stage}"
        for study in config["studies"].values()
        for stage in study["methods"]
        if config["methods"][stage]["training"] == "transductive"
        for base in config["methods"][stage]["params"][STAGE_PARAM]
    }
    for study in config["studies"].values():
        own = {name.partition("+")[2] for name in refined} & set(study["methods"])
        study["other_stage_runs"] = sorted(r for r in refined if r.partition("+")[2] not in own)


def _check_finite(value: Any, key: str = "") -> None:
    """NaN and infinity pass JSON-schema bounds (every comparison with NaN is false): refuse
    them here, naming the key, rather than after hours of preparation and encoding."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key or '(top level)'}: {value} is not a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _check_finite(v, f"{key}.{k}" if key else str(k))


def _schema(schema: dict[str, Any], config: Any, registered: dict[str, method_registry.Method]) -> dict[str, Any]:
    """The schema file completed from the registries: each method entry is validated against
    its base method's declared parameters, ``studies`` takes the registered studies and
    ``backbones.<name>.family`` the registered backbone families."""
    entries = config.get("methods") if isinstance(config, dict) else None
    names = set(registered) | set(entries if isinstance(entries, dict) else {})
    properties = {}
    for name in sorted(names):
        entry = entries.get(name) if isinstance(entries, dict) else None
        base = entry.get("base", name) if isinstance(entry, dict) else name
        if base not in registered:
            what = f"base method {base!r}" if base != name else f"method {name!r}"
            raise ConfigError(
                f"config key methods.{name}{'.base' if base != name else ''}: unknown {what}; "
                f"registered: {', '.join(sorted(registered))} (a variant names one as its base)"
            )
        properties[name] = {"type": "object", "additionalProperties": False, "properties": {**registered[base].params, **ENTRY_KEYS}}
    schema["properties"]["methods"] = {"type": "object", "additionalProperties": False, "properties": properties}
    # every study takes the common keys ($defs/study) and the settings its SPEC declares
    base = schema["$defs"]["study"]
    schema["properties"]["studies"]["properties"] = {
        name: {**base, "properties": {**base["properties"], **study.params}} for name, study in study_registry.registered().items()
    }
    schema["properties"]["backbones"]["additionalProperties"]["properties"]["family"]["enum"] = list(backbone_registry.registered())
    return schema


def _resolve_methods(entries: dict[str, Any], registered: dict[str, method_registry.Method]) -> dict[str, dict[str, Any]]:
    resolved = {}
    for name in [*registered, *(n for n in entries if n not in registered)]:
        entry = dict(entries.get(name, {}))
        base = registered[entry.pop("base", name)]
        label = entry.pop("label", base.label if name == base.name else f"{base.label} ({name})")
        train_conditions = entry.pop("train_conditions", "clean")
        inherited = {} if name == base.name else {k: v for k, v in entries.get(base.name, {}).items() if k not in ENTRY_KEYS}
        resolved[name] = {
            "base": base.name,
            "module": base.source,
            "training": base.training,
            "needs_text_encoder": base.needs_text_encoder,
            "requires": list(base.requires),
            "train_conditions": train_conditions,
            "label": label,
            # a variant sorts right after its base
            "order": base.order + (0 if name == base.name else 0.5),
            "params": {**base.defaults, **inherited, **entry},
        }
    return resolved


def _check_references(config: dict[str, Any]) -> None:
    datasets, backbones = config["datasets"], config["backbones"]
    for study_name, study in config["studies"].items():
        for name in study["methods"]:
            if name not in config["methods"]:
                where = f"studies.{study_name}.methods"
                raise ConfigError(former_method(name, where) or f"config key {where}: unknown method {name!r}; configured: {', '.join(config['methods'])}")
        for name in study["methods"]:
            _check_stage(config, study_name, study, name)
        for name in study["datasets"]:
            if name not in datasets:
                raise ConfigError(f"config key studies.{study_name}.datasets: unknown dataset {name!r}")
        for name in study["backbones"]:
            if name not in backbones:
                raise ConfigError(f"config key studies.{study_name}.backbones: unknown backbone {name!r}")
        for condition in study["conditions"]:
            _check_condition(condition, f"studies.{study_name}.conditions")
        if "attacks" in study:  # PGD runs the backbone the head was trained on: a frozen one
            tuned = [m for m in study["methods"] if config["methods"][m]["training"] == "backbone"]
            if tuned:
                raise ConfigError(f"config key studies.{study_name}.methods: {tuned[0]!r} trains its backbone; "
                                  "the adversarial study attacks heads on a frozen backbone (zero-shot and frozen-feature methods)")
        reference = study.get("reference_backbone")
        if reference is not None and reference not in study["backbones"]:
            raise ConfigError(f"config key studies.{study_name}.reference_backbone: {reference!r} is not one of the study's backbones")
    for name, spec in backbones.items():
        pretrain = spec.get("pretrain")
        if pretrain and pretrain["dataset"] not in datasets:
            raise ConfigError(f"config key backbones.{name}.pretrain.dataset: unknown dataset {pretrain['dataset']!r}")
        if pretrain and (spec.get("pretrained") or spec.get("checkpoint")):
            raise ConfigError(f"config key backbones.{name}: 'pretrain' cannot be combined with 'pretrained'/'checkpoint'")


# what a stage's ``methods`` may name: a transductive stage refines test predictions made from the
# cached features; a soup averages the weights of runs trained inside the backbone
STAGE_BASES = {"transductive": ("none", "frozen"), "soup": ("backbone",)}


def _check_stage(config: dict[str, Any], study_name: str, study: dict[str, Any], name: str) -> None:
    """A stage's ``methods`` names methods of the kind it builds on, each run by the same study
    (a soup's ingredients: variants of one backbone-training method, so their weights average)."""
    method = config["methods"][name]
    if method["training"] not in STAGE_BASES:
        return
    key = f"config key methods.{name}.{STAGE_PARAM}"
    for base in method["params"][STAGE_PARAM]:
        if base not in config["methods"]:
            raise ConfigError(f"{key}: unknown method {base!r}; configured: {', '.join(config['methods'])}")
        kind = config["methods"][base]["training"]
        if kind not in STAGE_BASES[method["training"]]:
            raise ConfigError(f"{key}: {base!r} is a {kind} method; a {method['training']} method builds on "
                              f"{' or '.join(STAGE_BASES[method['training']])} methods")
        if base not in study["methods"]:
            raise ConfigError(f"config key studies.{study_name}.methods: {name} builds on {base}, which the study does not run; add it")
    if method["training"] == "soup":
        modules = {config["methods"][base]["module"] for base in method["params"][STAGE_PARAM]}
        if len(modules) > 1:
            raise ConfigError(f"{key}: a soup averages variants of one method (the same weights and head); "
                              f"{', '.join(method['params'][STAGE_PARAM])} come from {len(modules)} methods")


def stage_of(config: dict[str, Any], method: str) -> tuple[str, str] | None:
    """``(base, stage)`` of a transductive stage's run (``linear_probe+transclip``), else None
    (a method's own runs, and the WiSE-FT mixes ``finetune+wise0.5``, which are not runs)."""
    base, plus, stage = method.partition("+")
    if plus and config["methods"].get(stage, {}).get("training") == "transductive":
        return base, stage
    return None


def training_of(config: dict[str, Any], method: str) -> str:
    """The training kind of a run's method (a stage's run: ``transductive``)."""
    return "transductive" if stage_of(config, method) else config["methods"][method]["training"]


def _check_condition(condition: str, key: str) -> None:
    try:
        parse_condition(condition)
    except ValueError as err:
        raise ConfigError(f"config key {key}: {err}, or a suite ({', '.join([*SUITES, ALL])})") from None


@dataclass(frozen=True)
class Skip:
    """A (method, backbone) pair of a study that does not run: the method requires what the
    backbone lacks. A method without training (zero-shot) still runs on such a backbone, for
    what needs no text tower: the backbone's own embedding (retrieval, invariance)."""

    method: str
    backbone: str
    missing: tuple[str, ...]
    family: str  # how the backbone's family is named (medtune.backbones)
    embedding_only: bool

    def reason(self) -> str:
        lacks = " and ".join(CAPABILITY_WORDS.get(c, c) for c in self.missing)
        return f"{self.method} requires {lacks}, which {self.backbone} ({self.family}) lacks"

    def record(self) -> dict[str, Any]:
        return {"method": self.method, "backbone": self.backbone, "missing": list(self.missing), "reason": self.reason(),
                "embedding_only": self.embedding_only}


CAPABILITY_WORDS = {"text_tower": "a text tower", "open_clip_towers": "an open_clip CLIP's towers"}


def backbone_capabilities(spec: dict[str, Any]) -> set[str]:
    """What a backbone offers the methods (medtune.methods.CAPABILITIES), from its family's declaration."""
    from medtune import backbones

    family = backbones.family_of(spec)
    return {name for name, has in (("text_tower", family.text_tower), ("open_clip_towers", family.open_clip_towers)) if has}


def missing_capabilities(config: dict[str, Any], method: str, backbone: str) -> tuple[str, ...]:
    """What ``method`` requires that ``backbone`` lacks; empty when the pair runs."""
    have = backbone_capabilities(config["backbones"][backbone])
    return tuple(r for r in config["methods"][method]["requires"] if r not in have)


def runs_on(config: dict[str, Any], method: str, backbone: str) -> bool:
    """Whether the plan makes ``method``'s runs on ``backbone``: a compatible pair, or a method
    without training (its job measures the backbone's own embedding whatever the backbone)."""
    return config["methods"][method]["training"] == "none" or not missing_capabilities(config, method, backbone)


def _study_skips(config: dict[str, Any], study: dict[str, Any]) -> list[Skip]:
    from medtune import backbones

    found = []
    for backbone in study["backbones"]:
        for method in study["methods"]:
            missing = missing_capabilities(config, method, backbone)
            if missing:
                family = backbones.family_of(config["backbones"][backbone]).label
                found.append(Skip(method, backbone, missing, family, config["methods"][method]["training"] == "none"))
    return found


def skip_messages(config: dict[str, Any]) -> list[str]:
    """One line per skipped (method, backbone) pair, naming the studies that list it and why."""
    studies: dict[Skip, list[str]] = {}
    for name, study in config["studies"].items():
        for skip in _study_skips(config, study):
            studies.setdefault(skip, []).append(name)
    lines = []
    for skip, names in studies.items():
        where = f"(stud{'ies' if len(names) > 1 else 'y'} {', '.join(names)})"
        if skip.embedding_only:
            lines.append(f"no {skip.method} classification on {skip.backbone} {where}: {skip.reason()}; "
                         "its embedding's retrieval (HA@K) and invariance still run")
        else:
            lines.append(f"skipped {skip.method} on {skip.backbone} {where}: {skip.reason()}")
    return lines


def _method_runs(config: dict[str, Any], study: dict[str, Any], dataset: str, backbone: str, method: str) -> list[Run]:
    """A method's runs in a study: one without training data, else one per seed and fraction or
    shot count; a transductive stage's, one on each run of each method it refines."""
    kind = config["methods"][method]["training"]
    if kind == "transductive":
        return [
            Run(r.dataset, f"{base}+{method}", r.backbone, r.seed, r.fraction, r.shots)
            for base in config["methods"][method]["params"][STAGE_PARAM]
            # a base that classifies nothing on this backbone (zero-shot without a text tower) has no predictions to refine
            if not missing_capabilities(config, base, backbone)
            for r in _method_runs(config, study, dataset, backbone, base)
        ]
    if kind == "none":
        return [Run(dataset, method, backbone)]
    return [Run(dataset, method, backbone, seed, format_fraction(f)) for seed in study["seeds"] for f in study["fractions"]] + [
        Run(dataset, method, backbone, seed, shots=int(k)) for seed in study["seeds"] for k in study["shots"]
    ]


def runs(config: dict[str, Any]) -> list[Run]:
    """Every run any study needs, each once, in a stable order; a method only on the backbones
    that have what it requires (:func:`runs_on`)."""
    out: dict[str, Run] = {}
    for study in config["studies"].values():
        for dataset in study["datasets"]:
            for backbone in study["backbones"]:
                for method in study["methods"]:
                    if not runs_on(config, method, backbone):
                        continue
                    out.update({r.path: r for r in _method_runs(config, study, dataset, backbone, method)})
    return list(out.values())


def methods_of(config: dict[str, Any], training: str) -> list[str]:
    """Names of the configured methods of one training kind (none, frozen, backbone)."""
    return [name for name, m in config["methods"].items() if m["training"] == training]


def _trains(config: dict[str, Any], study: dict[str, Any]) -> bool:
    return any(config["methods"][m]["training"] != "none" for m in study["methods"])


def train_conditions(config: dict[str, Any], dataset: str, backbone: str) -> list[str]:
    """Conditions of the train split: clean, plus each suite's augmented set a study trains on."""
    found = ["clean"]
    for study in config["studies"].values():
        if dataset in study["datasets"] and backbone in study["backbones"]:
            for method in (m for m in study["methods"] if runs_on(config, m, backbone)):
                augmented = augmented_condition(config["methods"][method]["train_conditions"])
                if augmented and augmented not in found:
                    found.append(augmented)
    return found


def conditions_for(config: dict[str, Any], dataset: str, backbone: str, method: str | None = None) -> list[str]:
    """Test-time conditions, clean first: those of the studies that evaluate ``method`` on
    ``dataset`` x ``backbone`` (or, without a method, every condition the backbone must encode)."""
    found = ["clean"]
    for study in config["studies"].values():
        if dataset in study["datasets"] and backbone in study["backbones"]:
            evaluated = [m for m in study["methods"] if runs_on(config, m, backbone)]
            if method in evaluated or (method is None and evaluated):
                found += [c for c in study["conditions"] if c not in found]
    return found


def fractions_for(config: dict[str, Any], dataset: str) -> list[str]:
    found: list[str] = []
    for study in config["studies"].values():
        if dataset in study["datasets"] and _trains(config, study):
            found += [format_fraction(f) for f in study["fractions"] if format_fraction(f) not in found]
    return sorted(found, key=float)


def shots_for(config: dict[str, Any], dataset: str) -> list[int]:
    found: list[int] = []
    for study in config["studies"].values():
        if dataset in study["datasets"] and _trains(config, study):
            found += [int(k) for k in study["shots"] if int(k) not in found]
    return sorted(found)


def seeds_for(config: dict[str, Any], dataset: str) -> list[int]:
    found: list[int] = []
    for study in config["studies"].values():
        if dataset in study["datasets"] and _trains(config, study):
            found += [s for s in study["seeds"] if s not in found]
    return found


def logit_runs(config: dict[str, Any]) -> set[str]:
    """Paths of the runs whose jobs keep val and test logits (logits.npz): those of the studies that ask (SPEC ``logits``)."""
    registered = study_registry.registered()
    asking = {name: study for name, study in config["studies"].items() if registered[name].logits}
    return {r.path for r in runs({**config, "studies": asking})}


def study_runs(config: dict[str, Any], study_name: str) -> list[Run]:
    """The runs of one study."""
    return runs({**config, "studies": {study_name: config["studies"][study_name]}})


def tables(config: dict[str, Any]) -> list[str]:
    return [t.name for name, study in config["studies"].items() for t in study_registry.tables(name, study)]


def figures(config: dict[str, Any]) -> list[str]:
    return [f.name for name, study in config["studies"].items() for f in study_registry.figures(name, study)]


def method_labels(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What tables and figures need of each method: its label, where it sorts, and what it trains on."""
    return {
        name: {"label": m["label"], "order": m["order"], "train_conditions": m["train_conditions"]}
        for name, m in config["methods"].items()
    }
