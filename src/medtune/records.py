"""Run manifests: every job that makes runs says, in a file, which runs it made.

A job writes ``runs.json`` in its output folder: one entry per run with the run's
labels (dataset, method, backbone, seed, fraction, shots) and its files, relative to the
manifest. Collectors, tables and figures read labels from these files (as LAION
CLIP_benchmark's result JSON carries its own identity), never from paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medtune.io import read_json, write_json

MANIFEST = "runs.json"
PREDICTIONS = "predictions.npz"  # a run's clean-test logits (medtune.evaluate.write_predictions)


def write_manifest(runs: list[dict[str, Any]], folder: str | Path) -> None:
    """``runs``: each the run's labels plus ``files``: {kind: path relative to ``folder``}."""
    write_json({"runs": runs}, Path(folder) / MANIFEST)


def manifest_path(output: str | Path) -> Path:
    """A job's declared output -> its manifest: the file itself, or ``runs.json`` inside a folder."""
    output = Path(output)
    return output / MANIFEST if output.is_dir() else output


def read_runs(outputs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every run of the given job outputs, its ``files`` made absolute."""
    found = []
    for output in outputs:
        path = manifest_path(output)
        for run in read_json(path)["runs"]:
            files = {kind: str(path.parent / rel) for kind, rel in run.get("files", {}).items()}
            found.append({**run, "files": files})
    return found


def read_predictions(path) -> dict[str, np.ndarray]:
    """A run's saved clean-test logits, each image's label and sample index. Here, not beside
    :func:`medtune.evaluate.write_predictions`: the tables read them without importing torch."""
    with np.load(path) as saved:
        return {key: saved[key] for key in ("logits", "labels", "index")}
