"""The conch family: CONCH v1 (mahmoodlab), a CoCa ViT-B/16 vision-language model with its own tokenizer.

Its package is not on the package index; the model is built here from open_clip and timm parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.models import Backbone, BackboneError

SPEC = {
    "label": "CONCH (CoCa)",
    "text_tower": True,
    "keys": ["model", "arch", "checkpoint"],
    "required": [],
    "presets": {},
}


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    raise BackboneError(f"backbone {name!r}: the conch family's loader is not built yet (issue 29)")
