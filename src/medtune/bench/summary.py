"""The bench's output files: one JSON per figure, ``bench.json`` and ``summary.md``, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medtune.bench.figure import Figure
from medtune.bench.machine import describe_machine
from medtune.io import write_text


def _plain(o: Any) -> Any:
    """numpy scalars as Python numbers; anything else JSON cannot hold (a path) as its string."""
    return o.item() if hasattr(o, "item") else str(o)


def write_json(obj: Any, path: Path) -> None:
    """``obj`` as indented JSON, keys in the order the bench built them."""
    write_text(json.dumps(obj, indent=2, default=_plain) + "\n", path)


def summary_markdown(figures: list[Figure], settings: dict[str, Any], m: dict[str, Any], seconds: float) -> str:
    end_load = f" (load average at the end {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    lines = ["## Performance", "", f"`make bench` (`python -m medtune.bench`) on {describe_machine(m)}; the bench itself took "
             f"{seconds:.0f} s{end_load}. Settings: {settings['summary']}.", "", "```"]
    lines += [f.line() for f in figures] + ["```", ""]
    for f in figures:
        lines.append(f"* **{f.name}** — {f.status}")
        lines += [f"  * {d}" for d in f.details]
    return "\n".join(lines) + "\n"


def write_summary(figures: list[Figure], settings: dict[str, Any], m: dict[str, Any], seconds: float, out: Path) -> str:
    """``out/summary.md`` and ``out/bench.json`` (machine, settings, every figure's verdict); the markdown."""
    text = summary_markdown(figures, settings, m, seconds)
    write_text(text, out / "summary.md")
    write_json({"machine": m, "settings": settings, "seconds": seconds,
                "figures": {f.key: {"value": f.value, "shown": f.shown, "target": f.target, "status": f.status} for f in figures}},
               out / "bench.json")
    return text
