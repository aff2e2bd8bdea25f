"""Test-time condition names of the robustness benchmarks, without importing torch.

The workflow's DAG is built from these names (``plan.py``), so they live apart from
the corruption functions (``corrupt.py``, ``corrupt_medmnistc.py``) that need torch.

Conditions come in *suites*, each a benchmark's set of corruptions x severities,
named ``{corruption}-{severity}``:

* ``pathclip``: PathCLIP's 7 corruptions x 4 severities (28; ``corrupt.py``).
* ``medmnistc``: the PathMNIST set of MedMNIST-C (11 corruptions x 5 severities) and a
  HED stain shift (5 severities), 60 in all (``corrupt_medmnistc.py``).

Names are unique across suites, so a name alone says which function corrupts with it.
A study picks a suite by name, ``all`` for every suite, or conditions one by one
(:func:`expand_conditions`).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Iterable

CORRUPTIONS = ("brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup")

COLOUR_FACTORS = {-2: 0.4, -1: 0.8, 1: 1.2, 2: 1.6}
# Hue shift in turns = (factor - 1) / 4; written out so the table reads as docs/robustness.md does.
HUE_SHIFTS = {-2: -0.15, -1: -0.05, 1: 0.05, 2: 0.15}
BLUR_SIGMAS = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
# Fraction of each side kept before scaling back up.
RESOLUTION_SCALES = {1: 0.8, 2: 0.6, 3: 0.4, 4: 0.2}
MARKUP_STROKES = {1: 1, 2: 2, 3: 3, 4: 4}

# MedMNIST-C's PathMNIST severities 1..5 (medmnistc-api, medmnistc/corruptions/registry.py,
# CORRUPTIONS_DS['pathmnist']), then the HED stain shift's sigma. Lengths in pixels are those
# of MedMNIST+'s 224 px images (corrupt_medmnistc.py scales them to the image's side).
MEDMNISTC_SEVERITIES: dict[str, tuple[Any, ...]] = {
    "pixelate": (0.8, 0.6, 0.4, 0.3, 0.25),  # side kept by PIL's box resize
    "jpeg_compression": (50, 30, 15, 10, 7),  # JPEG quality
    "defocus_blur": ((3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)),  # disk radius, alias sigma (px)
    "motion_blur": ((5, 5), (10, 5), (15, 5), (15, 8), (15, 12)),  # ImageMagick radius, sigma (px)
    "brightness_up": (1.1, 1.15, 1.2, 1.22, 1.25),  # PIL ImageEnhance.Brightness factor
    "brightness_down": (0.85, 0.8, 0.75, 0.72, 0.7),
    "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6),  # PIL ImageEnhance.Contrast factor
    "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5),
    "saturate": (0.05, 0.1, 0.15, 0.2, 0.25),  # added to HSV saturation
    "stain_deposit": (1, 2, 3, 4, 5),  # most ink marks (1..n drawn)
    "bubble": ((7, 15), (10, 15), (12, 15), (15, 20), (17, 25)),  # largest radius (px), most bubbles
    # beyond MedMNIST-C: sigma of the HED stain jitter (Tellez et al. 2018), alpha ~ N(1, sigma),
    # beta ~ N(0, sigma) per stain channel; 0.03 is about Tellez's HED-light, 0.12 HED-strong
    "hed_shift": (0.03, 0.06, 0.09, 0.12, 0.15),
}
MEDMNISTC_CORRUPTIONS = tuple(MEDMNISTC_SEVERITIES)

# The parameter each (corruption, level) passes to its function.
PARAMETERS: dict[str, dict[int, Any]] = {
    "brightness": COLOUR_FACTORS,
    "contrast": COLOUR_FACTORS,
    "blur": BLUR_SIGMAS,
    "resolution": RESOLUTION_SCALES,
    "saturation": COLOUR_FACTORS,
    "hue": COLOUR_FACTORS,
    "markup": MARKUP_STROKES,
} | {c: dict(enumerate(levels, start=1)) for c, levels in MEDMNISTC_SEVERITIES.items()}

SUITE_CORRUPTIONS: dict[str, tuple[str, ...]] = {"pathclip": CORRUPTIONS, "medmnistc": MEDMNISTC_CORRUPTIONS}
# every suite's corrupted conditions, in table order
SUITES: dict[str, tuple[str, ...]] = {
    suite: tuple(f"{c}-{level}" for c in corruptions for level in PARAMETERS[c])
    for suite, corruptions in SUITE_CORRUPTIONS.items()
}
ALL = "all"  # a study's shorthand for every suite
SUITE_OF: dict[str, str] = {c: suite for suite, corruptions in SUITE_CORRUPTIONS.items() for c in corruptions}

# PathCLIP's 29: what ``conditions: [pathclip]`` expands to.
CONDITIONS: list[str] = ["clean", *SUITES["pathclip"]]
ALL_CONDITIONS: list[str] = ["clean", *(c for names in SUITES.values() for c in names)]
# Level as the tables print it: -2, -1, 1, 2 for PathCLIP's colour, 1..4 or 1..5 otherwise, 0 for clean.
SEVERITY_LABEL: dict[str, int] = {"clean": 0} | {f"{c}-{level}": level for c in PARAMETERS for level in PARAMETERS[c]}


def parse_condition(name: str) -> tuple[str, int]:
    """``"brightness--2"`` -> ``("brightness", -2)``; ``"clean"`` -> ``("clean", 0)``."""
    if name == "clean":
        return "clean", 0
    corruption, _, level_text = str(name).partition("-")
    if corruption not in PARAMETERS:
        known = ", ".join(PARAMETERS)
        raise ValueError(f"unknown corruption in condition {name!r}; expected one of {known} or 'clean'")
    try:
        level = int(level_text)
    except ValueError:
        level = None
    # Comparing with the canonical spelling rejects "blur-+1", "blur-01", "blur- 1".
    if level not in PARAMETERS[corruption] or f"{corruption}-{level}" != name:
        raise ValueError(f"bad severity in condition {name!r}; {corruption} takes {sorted(PARAMETERS[corruption])}")
    return corruption, level


def suite_of(condition: str) -> str | None:
    """The suite a corrupted condition belongs to (None for ``clean``)."""
    corruption, _ = parse_condition(condition)
    return SUITE_OF.get(corruption)


def expand_conditions(names: Iterable[str]) -> list[str]:
    """A study's ``conditions`` with suites spelled out, clean first, each once.

    ``all`` is every suite; a suite's name is ``clean`` and its conditions; other names
    pass through as given (:func:`parse_condition` judges them).
    """
    found: list[str] = []
    for name in names:
        expanded = ALL_CONDITIONS if name == ALL else ["clean", *SUITES[name]] if name in SUITES else [name]
        found += [c for c in expanded if c not in found]
    return found


# Training-time pseudo-conditions: every image under one corruption of its own, picked
# from a suite's conditions by its sample index (corruption augmentation, the seed's
# "future work"). ``augmented`` is PathCLIP's suite, its name since before there were suites.
AUGMENTED = "augmented"
# a method's ``train_conditions``: clean only, or clean plus a suite's augmented copy
TRAIN_CONDITIONS = ("clean", AUGMENTED, *SUITES, ALL)
_MASK = 2**64 - 1


def augmented_condition(train_conditions: str) -> str | None:
    """The train split's pseudo-condition a method's ``train_conditions`` adds (None for clean).

    ``augmented`` and ``pathclip`` share one (``augmented``, as before there were suites);
    another suite ``s`` is ``augmented-s``, every suite ``augmented-all``.
    """
    if train_conditions == "clean":
        return None
    if train_conditions in (AUGMENTED, "pathclip"):
        return AUGMENTED
    if train_conditions in SUITES or train_conditions == ALL:
        return f"{AUGMENTED}-{train_conditions}"
    raise ValueError(f"unknown train_conditions {train_conditions!r}; expected one of {', '.join(TRAIN_CONDITIONS)}")


def augmentation_pool(condition: str) -> tuple[str, ...] | None:
    """The conditions an augmented pseudo-condition picks from; None if ``condition`` is not one."""
    if condition == AUGMENTED:
        return tuple(SUITES["pathclip"])
    prefix, _, suite = condition.partition("-")
    if prefix != AUGMENTED:
        return None
    if suite == ALL:
        return tuple(ALL_CONDITIONS[1:])
    return SUITES.get(suite)


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

    Rendezvous hashing: each condition of ``pool`` (default: PathCLIP's 28) gets a
    score from the image's key and the condition's *name*, and the highest wins. So the
    choice depends on names, not on positions in a list: adding a condition moves only the
    images that now pick it, and reordering the list moves none.
    """
    pool = CONDITIONS[1:] if pool is None else pool
    return max(pool, key=lambda name: (_mix(_name_hash(name) ^ _mix(int(key) & _MASK)), name))
