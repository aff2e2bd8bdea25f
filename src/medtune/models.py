"""Backbone loading through open_clip: pretrained tags, ``hf-hub:`` ids, local checkpoints, HF CLIPModels.

A backbone is described by a config entry (see ``config/schema``)::

    arch: RN50                # any open_clip model name, or hf-hub:org/repo
    pretrained: openai        # an open_clip pretrained tag (optional)
    checkpoint: path/to.pt    # a local checkpoint (optional), loaded with weights_only=True
    format: open_clip         # or hf_clip: checkpoint is a transformers CLIPModel folder (PLIP)
    quick_gelu: true          # OpenAI-trained weights need QuickGELU (open_clip #771)

Examples: ``{arch: ViT-B-16, pretrained: openai}``; ``{arch: hf-hub:wisdomik/QuiltNet-B-32}``;
PathCLIP ``{arch: ViT-B-16, checkpoint: pathclip-base.pt, quick_gelu: true}``;
PLIP ``{arch: ViT-B-32, checkpoint: plip/, format: hf_clip}``.

The embedded tiny architecture ships as an open_clip model config
(``model_configs/medtune-tiny.json``) registered on import, so it is built by
open_clip's own factory like every other model.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import torch

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# the preprocessing a pretrained tag declares; applied when a local checkpoint replaces the tag's weights
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded; the message names it."""


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


# open_clip imports transformers and timm whenever they are installed (seconds of every job
# that builds a model), though only some architectures use them: a Hugging Face text tower
# or tokenizer (text_cfg hf_model_name / hf_tokenizer_name, e.g. BiomedCLIP) and a timm image
# tower (vision_cfg timm_model_name). Both imports are optional in open_clip (try/except).
OPTIONAL_IMPORTS = ("transformers", "timm")
_open_clip: ModuleType | None = None
_blocked: frozenset[str] = frozenset()


def registered_open_clip(arch: str | None = None) -> ModuleType:
    """The ``open_clip`` module with medtune's model configs (``model_configs/``) registered.

    Use it instead of ``import open_clip`` wherever a model is built by architecture name, so
    that ``medtune-tiny`` resolves; the registration runs once per process. The first call
    imports open_clip without the :data:`OPTIONAL_IMPORTS` that ``arch`` does not need (None:
    none); a later call for an architecture that needs one imports open_clip again with it.
    """
    global _open_clip, _blocked
    needed = optional_imports(arch) if arch else set()
    if _open_clip is not None and not needed & _blocked:
        return _open_clip
    if _open_clip is not None:  # an earlier model of this process did without a tower this one needs
        for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
            del sys.modules[name]
    if "open_clip" in sys.modules:  # imported before medtune asked: with whatever is installed
        blocked = frozenset()
    else:
        blocked = frozenset(n for n in OPTIONAL_IMPORTS if n not in needed and n not in sys.modules)
    with _imports_refused(blocked):
        import open_clip
    # add_model_config appends a search path and rescans every config; once per import is enough
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _open_clip, _blocked = open_clip, blocked
    return open_clip


def optional_imports(arch: str) -> set[str]:
    """Which of :data:`OPTIONAL_IMPORTS` open_clip needs to build ``arch``, from its model config
    (medtune's or open_clip's JSON, an ``hf-hub:`` repo's in the local hub cache, a ``local-dir:``'s);
    all of them when the config cannot be read before the model is built."""
    config = _model_config(arch)
    if config is None:
        return set(OPTIONAL_IMPORTS)
    text, vision = config.get("text_cfg") or {}, config.get("vision_cfg") or {}
    needed = {"transformers"} if text.get("hf_model_name") or text.get("hf_tokenizer_name") else set()
    return needed | ({"timm"} if vision.get("timm_model_name") else set())


def _model_config(arch: str) -> dict[str, Any] | None:
    try:
        if arch.startswith("hf-hub:"):
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(arch[len("hf-hub:"):].split("@")[0], "open_clip_config.json")
            return json.loads(Path(path).read_text())["model_cfg"] if isinstance(path, str) else None
        if arch.startswith("local-dir:"):
            return json.loads((Path(arch[len("local-dir:"):]) / "open_clip_config.json").read_text())["model_cfg"]
        spec = importlib.util.find_spec("open_clip")
        folders = [MODEL_CONFIG_DIR] + [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
        for folder in folders:
            if (folder / f"{arch}.json").is_file():
                return json.loads((folder / f"{arch}.json").read_text())
    except (OSError, ValueError, KeyError, ImportError):
        pass
    return None


@contextmanager
def _imports_refused(names: frozenset[str]) -> Iterator[None]:
    """``import name`` raises ImportError inside the block (a None entry in sys.modules)."""
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in names:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def known_architectures() -> list[str]:
    return registered_open_clip().list_models()


def check_architecture(arch: str) -> None:
    if arch.startswith(("hf-hub:", "local-dir:")):
        return
    if arch not in known_architectures():
        raise BackboneError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")


def load_backbone(name: str, spec: dict[str, Any], weights: str | Path | None = None, device: str = "cpu") -> Backbone:
    """Build the backbone ``name`` from its config ``spec``.

    ``weights`` (an open_clip state dict) is loaded last: the pipeline passes the
    checkpoint its own pretraining rule produced. For ``format: open_clip`` it
    replaces ``spec['checkpoint']``; for ``hf_clip`` it goes on top of the converted model.
    """
    arch = spec["arch"]
    registered_open_clip(arch)  # open_clip with the optional towers this architecture needs
    check_architecture(arch)
    source = spec.get("checkpoint")
    for path in (source, weights):
        if path is not None and not Path(path).exists():
            raise BackboneError(f"backbone {name!r}: checkpoint {path} does not exist")
    # a backbone without weights (the untrained baseline) must still be the same on every run
    torch.manual_seed(int(spec.get("init_seed", 0)))
    hf = spec.get("format", "open_clip") == "hf_clip"
    with _as_backbone_error(name, arch, weights or source):
        model, tokenizer = _hf_clip_model(name, spec) if hf else _open_clip_model(name, spec, weights or source)
        if hf and weights is not None:
            registered_open_clip().load_checkpoint(model, str(weights), weights_only=True)
    model.to(device).eval()
    # each backbone's own preprocessing: what its tag, hub config or HF processor declares
    pp = model.visual.preprocess_cfg
    size = pp["size"][0] if isinstance(pp["size"], (tuple, list)) else int(pp["size"])
    return Backbone(name, model, tokenizer, size, tuple(pp["mean"]), tuple(pp["std"]))


def _open_clip_model(name: str, spec: dict[str, Any], checkpoint: str | Path | None) -> tuple[torch.nn.Module, Callable]:
    open_clip = registered_open_clip()
    arch, tag = spec["arch"], spec.get("pretrained")
    quick_gelu = resolve_quick_gelu(name, spec)
    model = open_clip.create_model(
        arch,
        # a local checkpoint replaces every weight: don't download the tag's only to overwrite them
        pretrained=None if checkpoint is not None else tag,
        force_quick_gelu=quick_gelu,
        force_preprocess_cfg=_tag_preprocess(arch, tag) if checkpoint is not None else None,
        weights_only=True,
        output_dict=True,
    )
    if checkpoint is not None:
        open_clip.load_checkpoint(model, str(checkpoint), weights_only=True)
    return model, open_clip.get_tokenizer(arch)


def _hf_clip_model(name: str, spec: dict[str, Any]) -> tuple[torch.nn.Module, Callable]:
    from medtune.hf_clip import load_hf_clip

    if spec.get("checkpoint") is None:
        raise BackboneError(f"backbone {name!r}: format hf_clip needs 'checkpoint' (a transformers CLIPModel folder)")
    model, cfg = load_hf_clip(spec["checkpoint"], quick_gelu=spec.get("quick_gelu"))
    _check_same_shape(name, spec["arch"], cfg)
    # HF CLIP's BPE is the original CLIP vocabulary: open_clip's SimpleTokenizer at HF's context length
    return model, registered_open_clip().SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])


def _check_same_shape(name: str, arch: str, cfg: dict[str, Any]) -> None:
    """``arch`` names the open_clip architecture the HF checkpoint is; say so when it is not.

    The model is built from the checkpoint's own config, so a wrong ``arch`` would
    otherwise pass unnoticed and mislabel every result.
    """
    open_clip = registered_open_clip()
    expected = open_clip.get_model_config(arch)
    defaults = {"vision_cfg": open_clip.CLIPVisionCfg(), "text_cfg": open_clip.CLIPTextCfg()}
    differ = [f"embed_dim {cfg['embed_dim']} vs {expected['embed_dim']}"] if expected["embed_dim"] != cfg["embed_dim"] else []
    for tower, default in defaults.items():
        for key, value in cfg[tower].items():
            want = expected.get(tower, {}).get(key, getattr(default, key))
            if key != "norm_kwargs" and value != want:
                differ.append(f"{tower}.{key} {value} vs {want}")
    if differ:
        raise BackboneError(f"backbone {name!r}: checkpoint is not a {arch} (checkpoint vs {arch}: {', '.join(differ)})")


def resolve_quick_gelu(name: str, spec: dict[str, Any]) -> bool:
    """The activation the weights were trained with (open_clip #771).

    The wrong one loads without any error and silently costs accuracy, so it is
    taken from where the weights declare it (pretrained tag, hf-hub config,
    ``-quickgelu`` architecture), a contradicting ``quick_gelu`` is refused, and a
    local checkpoint for an architecture that has OpenAI-lineage (QuickGELU)
    weights must say which it is. open_clip itself only warns on a tag mismatch.
    """
    arch, explicit = spec["arch"], spec.get("quick_gelu")
    declared, where = _declared_quick_gelu(arch, spec.get("pretrained"))
    if declared is not None and explicit is not None and bool(explicit) != declared:
        raise BackboneError(
            f"backbone {name!r}: quick_gelu: {str(explicit).lower()} contradicts {where} (trained with quick_gelu={str(declared).lower()})"
        )
    if declared is not None:
        return declared
    if explicit is not None:
        return bool(explicit)
    if spec.get("checkpoint") is not None and _has_quick_gelu_weights(arch):
        raise BackboneError(
            f"backbone {name!r}: {arch} has OpenAI-lineage weights that need QuickGELU, so checkpoint "
            f"{spec['checkpoint']} may too; set backbones.{name}.quick_gelu: true|false explicitly"
        )
    return False


def _declared_quick_gelu(arch: str, tag: str | None) -> tuple[bool | None, str]:
    open_clip = registered_open_clip()
    if arch.startswith(("hf-hub:", "local-dir:")):
        # the repo's open_clip_config.json is what open_clip builds; no quick_gelu there means GELU
        return bool(open_clip.get_model_config(arch).get("quick_gelu", False)), f"{arch}'s open_clip_config.json"
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False)), f"pretrained tag {tag!r}"
    if (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        return True, f"architecture {arch}"
    return None, ""


def _has_quick_gelu_weights(arch: str) -> bool:
    open_clip = registered_open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    return any(open_clip.get_pretrained_cfg(arch, t).get("quick_gelu", False) for t in tags)


def _tag_preprocess(arch: str, tag: str | None) -> dict[str, Any] | None:
    tag_cfg = registered_open_clip().get_pretrained_cfg(arch, tag) if tag else {}
    return {k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg} or None


@contextmanager
def _as_backbone_error(name: str, arch: str, checkpoint: str | Path | None) -> Iterator[None]:
    """Loading failures as one-line BackboneErrors naming the backbone (config errors, not tracebacks)."""
    try:
        yield
    except BackboneError:
        raise
    except pickle.UnpicklingError as err:
        raise BackboneError(
            f"backbone {name!r}: {checkpoint} holds more than tensors; torch.load(weights_only=True) refused it"
        ) from err
    # open_clip's load_checkpoint asserts on some shape changes (positional embedding width)
    except (RuntimeError, KeyError, OSError, ValueError, TypeError, AssertionError) as err:
        raise BackboneError(f"backbone {name!r} ({arch}, checkpoint={checkpoint}): {_one_line(err)}") from err


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
