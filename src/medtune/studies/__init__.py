"""The study registry: each reproduced study is one module in this package.

A study module declares, as a literal at its top, ::

    SPEC = {
        "label": "CLIPath",                 # its category in the report
        "conditions": ["clean"],            # test conditions when the config names none
        "tables": {name: {"function": ..., "title": ..., "when": ..., "prompts": ...}},
        "figures": {name: {"function": ..., "inputs": [...], "caption": ..., "when": ...}},
        "defaults": {...},                  # its own settings (optional), validated by "params",
        "params": {...},                    # JSON-schema properties, as a method's
        "logits": True,                     # (optional) its runs keep their val and test logits
    }

and the functions it names. A table function takes ``(metrics, costs, study, methods)``
(plus, as keywords, what its ``inputs`` name among :data:`TABLE_INPUTS`) and returns
``(numbers, pretty, best)`` (see :func:`medtune.tables.write_table`); a
figure function takes ``(inputs, study, methods, path)`` where ``inputs`` maps each
name in the figure's ``inputs`` to its file (see :data:`FIGURE_INPUTS`). ``when``
(optional) names a condition on the study's config under which the table or figure
is made: ``corrupted`` (the study evaluates under a corruption), ``shots`` (it trains on
k images per class) or ``paper:<key>``
(the config carries published numbers under ``paper.<key>``). A table whose numbers come from
image embeddings alone (retrieval, invariance) says ``"prompts": False``: its protocol card
(:mod:`medtune.protocol`) leaves the prompt set out, so a prompt change leaves it as it was.

Like :mod:`medtune.methods` this reads the declarations without importing the
modules, so the DAG is built without pandas or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medtune.registry import RegistryError, import_module, package_modules, read_spec

# what a figure may ask for; the workflow maps each to the study's files (common.smk)
FIGURE_INPUTS = {
    "metrics": "results/metrics.csv: tidy metric rows of every run",
    "costs": "results/costs.csv: training cost of every trained run",
    "runs": "the run outputs of the study's runs (first dataset and backbone); a run trained inside the backbone "
    "lists its own weights, and its head reads its own encoder's features",
    "images": "images.npy of the study's first dataset",
    "samples": "samples.csv of the study's first dataset",
    "test_features": "clean and corrupted test features of the study's first backbone on its first dataset",
    "robustness_index": "the robustness index of every backbone of the centre_shift study (results/robustness_index/)",
}

# what a table may ask for beyond metrics and costs, passed as a keyword of that name
TABLE_INPUTS = {
    "runs": "every run's manifest entry (medtune.records.read_runs): labels and files, such as the clean-test predictions",
    "robustness_index": "the robustness index of every backbone of the centre_shift study: a list of its JSON records",
}


@dataclass(frozen=True)
class Output:
    name: str
    function: str
    title: str = ""
    caption: str = ""
    inputs: tuple[str, ...] = ()
    when: str | None = None
    prompts: bool = True  # a table: whether its numbers may depend on the class prompts


@dataclass(frozen=True)
class Study:
    name: str
    label: str
    source: str
    conditions: tuple[str, ...] = ("clean",)
    tables: dict[str, Output] = field(default_factory=dict)
    figures: dict[str, Output] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # the study's own settings
    params: dict[str, Any] = field(default_factory=dict)  # JSON-schema properties validating them
    logits: bool = False  # its runs keep val and test logits (logits.npz)

    def load(self):
        return import_module(self.source)


def _outputs(entries: dict[str, Any], where: Path, kind: str) -> dict[str, Output]:
    out = {}
    allowed = TABLE_INPUTS if kind == "table" else FIGURE_INPUTS
    for name, entry in entries.items():
        inputs = tuple(entry.get("inputs", ()))
        unknown = [i for i in inputs if i not in allowed]
        if unknown:
            raise RegistryError(f"{where}: {kind} {name!r} asks for unknown input {unknown[0]!r}; expected one of {list(allowed)}")
        out[name] = Output(name, entry["function"], entry.get("title", ""), entry.get("caption", ""), inputs, entry.get("when"),
                           bool(entry.get("prompts", True)))
    return out


@lru_cache(maxsize=None)
def registered() -> dict[str, Study]:
    found: dict[str, Study] = {}
    seen: dict[str, str] = {}
    for path in package_modules(Path(__file__).parent):
        spec = read_spec(path)
        if spec is None:
            continue
        study = Study(
            name=path.stem,
            label=spec.get("label", path.stem),
            source=f"{__name__}.{path.stem}",
            conditions=tuple(spec.get("conditions", ("clean",))),
            tables=_outputs(spec.get("tables", {}), path, "table"),
            figures=_outputs(spec.get("figures", {}), path, "figure"),
            defaults=dict(spec.get("defaults", {})),
            params=dict(spec.get("params", {})),
            logits=bool(spec.get("logits", False)),
        )
        for name in [*study.tables, *(f"figure {f}" for f in study.figures)]:
            if name in seen:
                raise RegistryError(f"{path}: {name!r} is also declared by study {seen[name]!r}")
            seen[name] = study.name
        found[study.name] = study
    return found


def applies(output: Output, study: dict[str, Any]) -> bool:
    """Whether the study's config asks for this table or figure."""
    if output.when is None:
        return True
    if output.when == "corrupted":
        return any(c != "clean" for c in study["conditions"])
    if output.when == "shots":
        return bool(study.get("shots"))
    if output.when.startswith("paper:"):
        return bool(study.get("paper", {}).get(output.when.removeprefix("paper:")))
    raise RegistryError(f"unknown 'when' {output.when!r} of {output.name!r}")


def tables(name: str, study: dict[str, Any]) -> list[Output]:
    return [t for t in registered()[name].tables.values() if applies(t, study)]


def figures(name: str, study: dict[str, Any]) -> list[Output]:
    return [f for f in registered()[name].figures.values() if applies(f, study)]


def find_figure(figure: str) -> tuple[Study, Output]:
    for study in registered().values():
        if figure in study.figures:
            return study, study.figures[figure]
    raise KeyError(f"no study declares figure {figure!r}")


def draw(figure: str, inputs: dict[str, Any], study: dict[str, Any], methods: dict[str, Any], path) -> None:
    """Make one declared figure: its study module's function, given the files it asked for."""
    spec, output = find_figure(figure)
    getattr(spec.load(), output.function)(inputs, study, methods, path)
