"""The backbone family registry: every way of building a backbone is one module in this package.

A family module declares, as a literal at its top, ::

    SPEC = {
        "label": "timm vision encoder",      # how docs and tables name the family
        "text_tower": False,                 # True: zero-shot, prompts and text methods can run on it
        "open_clip_towers": False,           # True: the model is an open_clip CLIP, whose towers CoOp (learned
                                             # token embeddings) and CLIP-LoRA (packed attention) reach into
        "keys": ["model", "arch", ...],      # config keys it honours besides COMMON_KEYS
        "required": [["model", "arch"]],     # each inner list: at least one of these keys must be given
        "presets": {name: {...}},            # published models by name (`backbones.<name>.model`)
    }

and ``load(name, spec, weights, device) -> medtune.models.Backbone``. A config entry
names its family (``backbones.<name>.family``, default ``open_clip``); the plan reads the
family's declaration at DAG-build time (text tower or not, which keys it takes) without
importing torch, timm or transformers, and only the jobs that build the model import
the module. Adding a family is its module plus config entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from medtune.registry import RegistryError, check_spec_keys, import_module, package_modules, read_spec

DEFAULT_FAMILY = "open_clip"
# honoured by every family: which family, a seed for weights no checkpoint replaces, the encoding batch
COMMON_KEYS = ("family", "init_seed", "encode_batch_size")
# config keys that were replaced, and by what (a config written for an older medtune says so in one line)
RETIRED_KEYS = {"format": "family (format: hf_clip is now family: hf_clip)"}
_SPEC_KEYS = {"label", "text_tower", "open_clip_towers", "keys", "required", "presets"}


@dataclass(frozen=True)
class Family:
    name: str
    text_tower: bool
    label: str
    source: str  # dotted module name
    open_clip_towers: bool = False
    keys: tuple[str, ...] = ()
    required: tuple[tuple[str, ...], ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load(self) -> ModuleType:
        return import_module(self.source)


def _family(name: str, spec: dict[str, Any], source: str, where: Path) -> Family:
    check_spec_keys(spec, _SPEC_KEYS, where)
    if not isinstance(spec.get("text_tower"), bool):
        raise RegistryError(f"{where}: SPEC text_tower must be true or false, not {spec.get('text_tower')!r}")
    return Family(
        name=name,
        text_tower=spec["text_tower"],
        label=str(spec.get("label", name)),
        source=source,
        open_clip_towers=bool(spec.get("open_clip_towers", False)),
        keys=tuple(spec.get("keys", ())),
        required=tuple(tuple(alternatives) for alternatives in spec.get("required", ())),
        presets=dict(spec.get("presets", {})),
    )


@lru_cache(maxsize=None)
def registered() -> dict[str, Family]:
    """Every backbone family of this package, by name (the module's name)."""
    found: dict[str, Family] = {}
    for path in package_modules(Path(__file__).parent):
        spec = read_spec(path)
        if spec is not None:
            found[path.stem] = _family(path.stem, spec, f"{__name__}.{path.stem}", path)
    return found


def family_of(spec: Mapping[str, Any]) -> Family:
    """The family of one ``config["backbones"][name]`` entry."""
    name = spec.get("family", DEFAULT_FAMILY)
    families = registered()
    if name not in families:
        raise RegistryError(f"unknown backbone family {name!r}; registered: {', '.join(families)}")
    return families[name]


def has_text_tower(spec: Mapping[str, Any]) -> bool:
    """Whether the backbone encodes text (zero-shot, prompt tuning, text-side adapters need it)."""
    return family_of(spec).text_tower


def config_problem(backbones: Any) -> str | None:
    """The first backbone entry that does not fit its family, as one line naming the key; None when all fit.

    A key the family does not use (``quick_gelu`` on a timm encoder) would be silently
    ignored, so it is refused, as is a key an older medtune read (``format``).
    """
    if not isinstance(backbones, Mapping):
        return None  # the schema says what is wrong
    families = registered()
    for name, spec in backbones.items():
        if not isinstance(spec, Mapping):
            continue
        for key, replacement in RETIRED_KEYS.items():
            if key in spec:
                return f"config key backbones.{name}.{key}: replaced by {replacement}"
        family = families.get(spec.get("family", DEFAULT_FAMILY))
        if family is None:
            return f"config key backbones.{name}.family: unknown family {spec.get('family')!r}; registered: {', '.join(families)}"
        unused = [key for key in spec if key not in COMMON_KEYS and key not in family.keys]
        if unused:
            return f"config key backbones.{name}.{unused[0]}: family {family.name!r} does not use it (it uses {', '.join(family.keys)})"
        for alternatives in family.required:
            if not any(key in spec for key in alternatives):
                return f"config key backbones.{name}.{alternatives[0]} is required for family {family.name!r}" + (
                    f" (or {' or '.join(alternatives[1:])})" if len(alternatives) > 1 else ""
                )
        model = spec.get("model")
        if model is not None and model not in family.presets:
            return (f"config key backbones.{name}.model: family {family.name!r} has no model {model!r}; "
                    f"it has {', '.join(family.presets) or 'none'}")
    return None
