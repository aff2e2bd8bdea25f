"""The transformers family: vision-only encoders saved as Hugging Face ``AutoModel`` folders (Phikon, Phikon-v2).

No text tower: the plan runs only the methods that need image features alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.models import Backbone, BackboneError

SPEC = {
    "label": "transformers vision encoder",
    "text_tower": False,
    "keys": ["model", "arch", "checkpoint", "embedding", "image_size", "mean", "std"],
    "required": [["model", "arch", "checkpoint"]],
    "presets": {},
}


def build(name: str, spec: dict[str, Any], weights: str | Path | None = None) -> Backbone:
    raise BackboneError(f"backbone {name!r}: the transformers family's loader is not built yet (issue 29)")
