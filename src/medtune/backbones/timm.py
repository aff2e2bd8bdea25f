"""The timm family: vision-only encoders built by ``timm.create_model`` (UNI, UNI2-h, Virchow, H-optimus, ...).

No text tower: the plan runs only the methods that need image features alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.models import Backbone, BackboneError

SPEC = {
    "label": "timm vision encoder",
    "text_tower": False,
    "keys": ["model", "arch", "checkpoint", "kwargs", "embedding", "image_size", "mean", "std"],
    "required": [["model", "arch"]],
    "presets": {},
}


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    raise BackboneError(f"backbone {name!r}: the timm family's loader is not built yet (issue 29)")
