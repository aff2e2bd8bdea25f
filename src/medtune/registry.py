"""Read the ``SPEC`` a method or study module declares, without importing the module.

A method or study is declared once, in its own module, as a literal ``SPEC = {...}``
at the top level. The workflow builds its DAG from these declarations; reading them
with :mod:`ast` instead of importing the modules keeps DAG building free of torch,
scikit-learn and matplotlib (a few milliseconds instead of seconds). The modules
themselves are imported only by the jobs that run them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class RegistryError(ValueError):
    """A module's SPEC is missing or malformed; the message names the file."""


def read_spec(path: str | Path) -> dict[str, Any] | None:
    """The module's top-level ``SPEC`` literal, or None for a module that declares none."""
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in node.targets):
            try:
                spec = ast.literal_eval(node.value)
            except ValueError:
                raise RegistryError(f"{path}: SPEC must be a literal (numbers, strings, lists, dicts), line {node.lineno}") from None
            if not isinstance(spec, dict):
                raise RegistryError(f"{path}: SPEC must be a dict, line {node.lineno}")
            return spec
    return None


def check_spec_keys(spec: dict[str, Any], allowed: set[str], where: str | Path) -> None:
    """RegistryError naming the file and the first key of ``spec`` that is not ``allowed``."""
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RegistryError(f"{where}: unknown SPEC key {unknown[0]!r}; expected {sorted(allowed)}")


def package_modules(package_dir: Path) -> list[Path]:
    """The modules of a package folder that may declare a SPEC, in name order."""
    return sorted(p for p in package_dir.glob("*.py") if not p.name.startswith("_"))


def import_module(source: str) -> ModuleType:
    """Import a module by dotted name, or by file path for modules outside the package."""
    if not source.endswith(".py"):
        return importlib.import_module(source)
    path = Path(source).resolve()
    name = f"medtune_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RegistryError(f"cannot import {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    loader_spec.loader.exec_module(module)
    return module
