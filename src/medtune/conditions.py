"""Test-time condition names of the robustness benchmark, without importing torch.

The workflow's DAG is built from these names (``plan.py``), so they live apart from
the corruption functions (``corrupt.py``) that need torch. See ``corrupt.py`` for
what each corruption and level does.
"""

from __future__ import annotations

import functools
import hashlib

CORRUPTIONS = ("brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup")

COLOUR_FACTORS = {-2: 0.4, -1: 0.8, 1: 1.2, 2: 1.6}
# Hue shift in turns = (factor - 1) / 4; written out so the table reads as the README does.
HUE_SHIFTS = {-2: -0.15, -1: -0.05, 1: 0.05, 2: 0.15}
BLUR_SIGMAS = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
# Fraction of each side kept before scaling back up.
RESOLUTION_SCALES = {1: 0.8, 2: 0.6, 3: 0.4, 4: 0.2}
MARKUP_STROKES = {1: 1, 2: 2, 3: 3, 4: 4}

# The parameter each (corruption, level) passes to its function below.
PARAMETERS: dict[str, dict[int, float]] = {
    "brightness": COLOUR_FACTORS,
    "contrast": COLOUR_FACTORS,
    "blur": BLUR_SIGMAS,
    "resolution": RESOLUTION_SCALES,
    "saturation": COLOUR_FACTORS,
    "hue": COLOUR_FACTORS,
    "markup": MARKUP_STROKES,
}

CONDITIONS: list[str] = ["clean"] + [f"{c}-{level}" for c in CORRUPTIONS for level in PARAMETERS[c]]
# Level as the seed's tables print it: -2, -1, 1, 2 for colour, 1..4 otherwise, 0 for clean.
SEVERITY_LABEL: dict[str, int] = {"clean": 0} | {
    f"{c}-{level}": level for c in CORRUPTIONS for level in PARAMETERS[c]
}


def parse_condition(name: str) -> tuple[str, int]:
    """``"brightness--2"`` -> ``("brightness", -2)``; ``"clean"`` -> ``("clean", 0)``."""
    if name == "clean":
        return "clean", 0
    corruption, _, level_text = str(name).partition("-")
    if corruption not in PARAMETERS:
        known = ", ".join(CORRUPTIONS)
        raise ValueError(f"unknown corruption in condition {name!r}; expected one of {known} or 'clean'")
    try:
        level = int(level_text)
    except ValueError:
        level = None
    # Comparing with the canonical spelling rejects "blur-+1", "blur-01", "blur- 1".
    if level not in PARAMETERS[corruption] or f"{corruption}-{level}" != name:
        raise ValueError(f"bad severity in condition {name!r}; {corruption} takes {sorted(PARAMETERS[corruption])}")
    return corruption, level


# A training-time pseudo-condition: every image under one corruption of its own, picked
# from the 28 by its sample index (corruption augmentation, the seed's "future work").
AUGMENTED = "augmented"
_MASK = 2**64 - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=None)
def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def augmentation_for(key: int, pool: tuple[str, ...] | None = None) -> str:
    """The corruption an image gets in the augmented training set; fixed per sample index.

    Rendezvous hashing: each condition of ``pool`` (default: the 28 corrupted ones) gets a
    score from the image's key and the condition's *name*, and the highest wins. So the
    choice depends on names, not on positions in a list: adding a condition moves only the
    images that now pick it, and reordering the list moves none.
    """
    pool = CONDITIONS[1:] if pool is None else pool
    return max(pool, key=lambda name: (_mix(_name_hash(name) ^ _mix(int(key) & _MASK)), name))
