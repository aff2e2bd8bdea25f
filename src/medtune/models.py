"""Backbone loading through open_clip: pretrained tags, ``hf-hub:`` ids, local checkpoints.

A backbone is described by a config entry (see ``config/schema``)::

    arch: RN50                # any open_clip model name, or hf-hub:org/repo
    pretrained: openai        # an open_clip pretrained tag (optional)
    checkpoint: path/to.pt    # a local checkpoint file (optional), loaded with weights_only=True
    quick_gelu: true          # OpenAI-trained weights need QuickGELU (open_clip #771)

The embedded tiny architecture ships as an open_clip model config
(``model_configs/medtune-tiny.json``) registered on import, so it is built by
open_clip's own factory like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


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


def _open_clip():
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def known_architectures() -> list[str]:
    return _open_clip().list_models()


def check_architecture(arch: str) -> None:
    if arch.startswith(("hf-hub:", "local-dir:")):
        return
    if arch not in known_architectures():
        raise BackboneError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")


def load_backbone(name: str, spec: dict[str, Any], weights: str | Path | None = None, device: str = "cpu") -> Backbone:
    """Build the backbone ``name`` from its config ``spec``.

    ``weights`` overrides ``spec['checkpoint']``: the pipeline passes the
    checkpoint its own pretraining rule produced.
    """
    open_clip = _open_clip()
    arch = spec["arch"]
    check_architecture(arch)
    checkpoint = weights or spec.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BackboneError(f"backbone {name!r}: checkpoint file {checkpoint} does not exist")
    # a backbone without weights (the untrained baseline) must still be the same on every run
    torch.manual_seed(int(spec.get("init_seed", 0)))
    try:
        model = open_clip.create_model(
            arch,
            pretrained=spec.get("pretrained"),
            force_quick_gelu=bool(spec.get("quick_gelu", False)),
            device=device,
            weights_only=True,
            output_dict=True,
        )
        if checkpoint is not None:
            open_clip.load_checkpoint(model, str(checkpoint), weights_only=True, device=device)
    except (RuntimeError, KeyError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"backbone {name!r} ({arch}, checkpoint={checkpoint}): {first_line}") from err
    except Exception as err:  # unpickling refused by weights_only=True surfaces as UnpicklingError
        if type(err).__name__ == "UnpicklingError":
            raise BackboneError(
                f"backbone {name!r}: {checkpoint} is not a plain tensor checkpoint (weights_only=True refused it)"
            ) from err
        raise
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
    return Backbone(name, model, open_clip.get_tokenizer(arch), size, mean, std)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
