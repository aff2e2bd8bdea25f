"""Backbones as the rest of medtune sees them, and the open_clip machinery the families share.

A backbone is described by a config entry (see ``config/schema``) whose ``family``
(default ``open_clip``) names the module of :mod:`medtune.backbones` that builds it::

    arch: RN50                # open_clip family: any open_clip model name, or hf-hub:org/repo
    pretrained: openai        # an open_clip pretrained tag (optional)
    checkpoint: path/to.pt    # a local checkpoint (optional), loaded with weights_only=True
    quick_gelu: true          # OpenAI-trained weights need QuickGELU (open_clip #771)

Examples: ``{arch: ViT-B-16, pretrained: openai}``; ``{arch: hf-hub:wisdomik/QuiltNet-B-32}``;
PathCLIP ``{arch: ViT-B-16, checkpoint: pathclip-base.pt, quick_gelu: true}``;
PLIP ``{family: hf_clip, arch: ViT-B-32, checkpoint: plip/}``; UNI2-h
``{family: timm, model: uni2-h, checkpoint: uni2-h/pytorch_model.bin}``.

Every family gives a :class:`Backbone`: a model with ``encode_image`` (and, with a
text tower, ``encode_text`` and ``logit_scale``), its input size and mean/std.

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


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded; the message names it."""


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module  # encode_image(x) -> B x D; with a text tower also encode_text and logit_scale
    tokenizer: Callable[..., torch.Tensor] | None  # None: no text tower
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def text_tower(self) -> bool:
        return self.tokenizer is not None

    @property
    def logit_scale(self) -> float:
        if not self.text_tower:
            raise BackboneError(f"backbone {self.name!r} has no text tower, so no logit scale")
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
    """Build the backbone ``name`` from its config ``spec`` by its family's loader
    (``backbones.<name>.family``, see :mod:`medtune.backbones`).

    ``weights`` (a state dict in the family's own layout) is loaded last: the pipeline
    passes the checkpoint its own pretraining rule produced.
    """
    from medtune.backbones import family_of

    family = family_of(spec)
    for path in (spec.get("checkpoint"), weights):
        if path is not None and not str(path).startswith("hf-hub:") and not Path(path).exists():
            raise BackboneError(f"backbone {name!r}: checkpoint {path} does not exist")
    # a backbone without weights (the untrained baseline) must still be the same on every run
    torch.manual_seed(int(spec.get("init_seed", 0)))
    with _as_backbone_error(name, spec.get("arch") or spec.get("model") or family.name, weights or spec.get("checkpoint")):
        backbone = family.load().build(name, spec, weights)
    backbone.model.to(device).eval()
    return backbone


# the weight files of a Hugging Face model folder (save_pretrained, or a hub snapshot), in the order tried
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_file(path: str | Path) -> Path:
    """The weights file ``path`` names: itself, or the first of :data:`WEIGHT_FILES` in the folder it is."""
    path = Path(path)
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise BackboneError(f"{path}: none of {', '.join(WEIGHT_FILES)} (sharded checkpoints are not supported)")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file or folder: safetensors, or a torch pickle read with weights_only=True."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Every parameter of ``module`` from ``state`` and nothing left over (keys starting with one of
    ``ignore`` aside), or one line saying which keys are missing, unexpected or of another shape."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
    if problems:
        raise BackboneError(f"{what} does not fit the model: keys {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def preprocess_of(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Input side, mean and std an open_clip model declares (its tag, hub config or HF processor)."""
    pp = model.visual.preprocess_cfg
    size = pp["size"][0] if isinstance(pp["size"], (tuple, list)) else int(pp["size"])
    return size, tuple(pp["mean"]), tuple(pp["std"])


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
