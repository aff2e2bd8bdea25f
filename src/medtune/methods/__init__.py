"""The method registry: every adaptation method is one module in this package.

A method module declares, as a literal at its top, ::

    SPEC = {
        "training": "frozen",          # none (zero-shot) | frozen (cached features) | backbone
        "needs_text_encoder": False,   # frozen methods that back-propagate through the text tower
        "requires": [],                # what a backbone must have for it: "text_tower" (class text
                                       # features or the text encoder), "open_clip_towers" (it reaches
                                       # into an open_clip CLIP's towers); [] runs on any backbone
        "label": "CLIP + RFC",         # how tables and figures name it
        "order": 30,                   # where it sorts in tables and legends
        "defaults": {...},             # its hyperparameters
        "params": {...},               # JSON-schema properties validating them
    }

and the functions its kind needs: ``fit(data, params, seed)`` and ``build_head(state)``
for frozen methods (see :mod:`medtune.heads`), ``refine(base_state, data, params, seed)`` and
``build_head(state)`` for a transductive stage on other methods' runs (see
:mod:`medtune.methods.transclip`), ``tune(...)`` and ``mixes(...)`` for
backbone training (see :mod:`medtune.methods.finetune` and :mod:`medtune.methods.clip_lora`;
``tune``'s info may give ``trainable_parameters`` and ``images_seen`` for the cost record,
else the parameters left trainable and the training images times ``epochs`` are counted). Its name is the module's
name. Everything else — the config schema, the plan, the rules, tables and figures —
reads the registry, so adding a method is its module plus its config entry. Modules
outside the package are registered with the config key ``method_modules``.

This module imports neither torch nor the method modules: the workflow builds its
DAG from the declarations alone (:mod:`medtune.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from medtune.registry import RegistryError, check_spec_keys, import_module, package_modules, read_spec

# none: zero-shot; frozen: fits on cached features; backbone: trains inside the backbone;
# transductive: refines the test predictions of each method its param ``methods`` names, a run
# ``{base}+{name}`` per run of the base; soup: averages the weights of the backbone-trained runs of
# the methods its ``methods`` names
TRAINING_KINDS = ("none", "frozen", "backbone", "transductive", "soup")
# kinds whose runs are made from other methods' runs, and the param that names those methods
STAGE_KINDS = ("transductive", "soup")
STAGE_PARAM = "methods"
# what a method may require of a backbone, as each family declares it (medtune.backbones): a text
# tower, and an open_clip CLIP's own towers (CoOp's learned token embeddings, CLIP-LoRA's packed
# attention, fine-tuning's model(images, tokens)), which CONCH's are not
CAPABILITIES = ("text_tower", "open_clip_towers")
_SPEC_KEYS = {"training", "needs_text_encoder", "requires", "label", "order", "defaults", "params"}


@dataclass(frozen=True)
class Method:
    name: str
    training: str  # one of TRAINING_KINDS
    label: str
    order: float
    source: str  # dotted module name, or a file path for a module outside the package
    needs_text_encoder: bool = False
    requires: tuple[str, ...] = ()  # of CAPABILITIES
    defaults: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # JSON-schema properties

    def load(self) -> ModuleType:
        return import_module(self.source)


def _method(name: str, spec: dict[str, Any], source: str, where: Path) -> Method:
    check_spec_keys(spec, _SPEC_KEYS, where)
    if spec.get("training") not in TRAINING_KINDS:
        raise RegistryError(f"{where}: SPEC training must be one of {TRAINING_KINDS}, not {spec.get('training')!r}")
    requires = spec.get("requires")
    # no default: a method that reads class text but forgot to say so would crash on a
    # vision-only backbone after its features were encoded, instead of being skipped
    if not isinstance(requires, list) or any(r not in CAPABILITIES for r in requires):
        raise RegistryError(
            f"{where}: SPEC requires must be a list of {list(CAPABILITIES)} ([] for a method that needs image features "
            f"alone), not {requires!r}"
        )
    if spec.get("needs_text_encoder") and "text_tower" not in requires:
        raise RegistryError(f"{where}: SPEC needs_text_encoder is true, so requires must name 'text_tower'")
    if spec["training"] in STAGE_KINDS and STAGE_PARAM not in spec.get("params", {}):
        raise RegistryError(f"{where}: a {spec['training']} method needs the param {STAGE_PARAM!r} (the methods whose runs it uses)")
    return Method(
        name=name,
        training=spec["training"],
        label=str(spec.get("label", name)),
        order=float(spec.get("order", 1000)),
        source=source,
        needs_text_encoder=bool(spec.get("needs_text_encoder", False)),
        requires=tuple(requires),
        defaults=dict(spec.get("defaults", {})),
        params=dict(spec.get("params", {})),
    )


@lru_cache(maxsize=None)
def _registered(extra: tuple[str, ...]) -> dict[str, Method]:
    found: dict[str, Method] = {}
    for path in package_modules(Path(__file__).parent):
        spec = read_spec(path)
        if spec is not None:
            found[path.stem] = _method(path.stem, spec, f"{__name__}.{path.stem}", path)
    for source in extra:
        path = Path(source)
        if not path.is_file():
            raise RegistryError(f"method module {source} does not exist")
        spec = read_spec(path)
        if spec is None:
            raise RegistryError(f"{source}: declares no SPEC, so it is not a method module")
        if path.stem in found:
            raise RegistryError(f"{source}: a method named {path.stem!r} is already registered ({found[path.stem].source})")
        found[path.stem] = _method(path.stem, spec, str(path.resolve()), path)
    return found


def registered(extra_modules: Iterable[str] = ()) -> dict[str, Method]:
    """Every method: this package's modules, then ``extra_modules`` (file paths)."""
    return _registered(tuple(str(m) for m in extra_modules))


def load(method: dict[str, Any]) -> ModuleType:
    """The module of a configured method (an entry of the validated ``config["methods"]``)."""
    return import_module(method["module"])
