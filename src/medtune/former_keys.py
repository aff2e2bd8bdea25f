"""Config keys and method names an earlier medtune accepted, with what replaced them.

A config written for an earlier version would otherwise stop with the schema's bare
"'C' was unexpected" or "unknown method 'rfc_augmented'". The config check
(:func:`medtune.plan.validate`) consults these tables only once a key or method has
been refused, so an entry can never block a config the current schema accepts.
"""

from __future__ import annotations

from typing import Any, Mapping

# (base method, parameter) -> what replaced it
RENAMED_PARAMS: dict[tuple[str, str], str] = {
    ("linear_probe", "C"): (
        "the list of C values became a log grid: write C_range: [low, high] and steps_per_decade "
        "(C: [0.1, 1, 10] is C_range: [0.1, 10] with steps_per_decade: 1; CLIP's sweep is [1e-6, 1e6] at 8)"
    ),
    ("rfc", "hidden_divisors"): (
        "renamed hidden_widths, whose entries are widths or 'd/N' for the feature width over N "
        "(hidden_divisors: [4, 16, 4] is hidden_widths: [d/4, d/16, d/4])"
    ),
}

# methods that were built in and are now variants a config declares under methods:
FORMER_METHODS: dict[str, str] = {
    "rfc_augmented": "{base: rfc, train_conditions: augmented}",
    "linear_probe_augmented": "{base: linear_probe, train_conditions: augmented}",
    "finetune_caption": "{base: finetune, text: caption}",
    "finetune_label": "{base: finetune, text: label}",
}


def former_param(methods: Any) -> str | None:
    """One line for the first method entry using a replaced parameter; None when none does."""
    if not isinstance(methods, Mapping):
        return None
    for name, entry in methods.items():
        if not isinstance(entry, Mapping):
            continue
        base = entry.get("base", name)
        for key in entry:
            if (base, key) in RENAMED_PARAMS:
                return f"config key methods.{name}.{key} is from an earlier medtune: {RENAMED_PARAMS[base, key]}"
    return None


def former_method(name: str, where: str) -> str | None:
    """One line for a study naming a method that is now a variant to declare; None otherwise."""
    if name not in FORMER_METHODS:
        return None
    return (f"config key {where}: {name!r} is no longer built in; declare it as a variant under methods: "
            f"{name}: {FORMER_METHODS[name]}")
