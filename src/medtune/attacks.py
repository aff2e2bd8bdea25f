"""Names of the adversarial test conditions, without importing torch (the attack itself is
:mod:`medtune.pgd`; the protocols and their defaults are declared in the adversarial study's SPEC).

A protocol gives its radii ``epsilons`` and ``step`` in its ``unit``: ``range`` (a fraction of
each image's own intensity range, per channel: THUNDER's) or ``1/255`` (of the pixel scale:
TeCoA's). An attacked run's metric rows carry the condition ``pgd-{protocol}-{epsilon}``, and
``pgd-{protocol}-0`` is the same images unattacked (the attacked images are a subset of the
test split, so their clean accuracy is not the run's ``clean`` row).
"""

from __future__ import annotations

from typing import Any

UNITS = {"range": None, "1/255": 1 / 255}  # None: relative to each image's range


def condition(protocol: str, epsilon: float) -> str:
    return f"pgd-{protocol}-{epsilon:g}"


def conditions(protocol: str, settings: dict[str, Any]) -> list[str]:
    """Clean (epsilon 0) first, then every radius of the protocol."""
    return [condition(protocol, e) for e in [0, *settings["epsilons"]]]


def epsilon_label(settings: dict[str, Any], epsilon: float) -> str:
    """How a table or figure writes a radius: ``1/255``, ``0.0015 x range``."""
    if epsilon == 0:
        return "0 (clean)"
    return f"{epsilon:g}/255" if settings["unit"] == "1/255" else f"{epsilon:g} x range"


def pixel_scale(settings: dict[str, Any]) -> float | None:
    """What one unit of the protocol is in pixels of [0, 1]; None for radii relative to each image's range."""
    return UNITS[settings["unit"]]
