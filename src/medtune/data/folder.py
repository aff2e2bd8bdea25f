"""Bring-your-own data: an image folder per class, or a CSV manifest.

(a) :func:`from_image_folder`: ``root/<class>/*.png``, or with top-level split
folders ``root/{train,val,test}/<class>/*.png``; without split folders the
splits are a seeded, class-stratified draw by ``fractions``.

(b) :func:`from_manifest`: a CSV with columns ``path, label`` and optionally
``caption, split, group``; relative paths are relative to the manifest's folder.

Classes are sorted by name unless a class list is given (its order then sets
the label indices); a class outside a given list is an error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from medtune.data.convert import (
    DEFAULT_FRACTIONS,
    DEFAULT_SIZE,
    list_images,
    read_table,
    stratified_splits,
    write_image_dataset,
)
from medtune.data.store import DatasetError

SPLIT_ALIASES = {
    "pretrain": "pretrain",
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def class_indices(
    found: Sequence[str], items: Sequence, classes: Sequence[str] | None, source: Path
) -> tuple[list[str], list[int]]:
    """Class names (sorted found names, or ``classes`` when given) and a label index per item."""
    names = sorted(set(found)) if classes is None else list(classes)
    index = {name: i for i, name in enumerate(names)}
    for value, item in zip(found, items):
        if value not in index:
            raise DatasetError(f"{source}: label {value!r} of {item} is not in the class list {names}")
    return names, [index[value] for value in found]


def split_name(value: str, where: str) -> str:
    if value.lower() not in SPLIT_ALIASES:
        raise DatasetError(f"{where}: unknown split {value!r} (expected one of {sorted(SPLIT_ALIASES)})")
    return SPLIT_ALIASES[value.lower()]


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(root: Path) -> list[tuple[Path, str | None, str]]:
    """``(image, split or None, class name)`` for every image under ``root``."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such image folder")
    top = subfolders(root)
    split_dirs = [d for d in top if d.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(top):
        others = [d.name for d in top if d not in split_dirs]
        raise DatasetError(f"{root}: mixes split folders {[d.name for d in split_dirs]} with class folders {others}")
    loose = [p for p in list_images(root) if p.parent == root or (split_dirs and p.parent.parent == root)]
    if loose:
        raise DatasetError(f"{root}: image {loose[0]} lies outside a class folder ({len(loose)} such)")
    if split_dirs:
        return [
            (image, split_name(s.name, str(s)), c.name)
            for s in split_dirs
            for c in subfolders(s)
            for image in list_images(c)
        ]
    return [(image, None, c.name) for c in top for image in list_images(c)]


def from_image_folder(
    root: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    group: str = "",
) -> Path:
    """Convert ``root/[split/]class/image`` files to the canonical store."""
    root = Path(root)
    items = scan_image_folder(root)
    if not items:
        raise DatasetError(f"{root}: no images found in class folders")
    names, labels = class_indices([c for _, _, c in items], [p for p, _, _ in items], classes, root)
    if items[0][1] is None:
        splits = stratified_splits(labels, fractions, seed)
    else:
        splits = [s for _, s, _ in items]
    return write_image_dataset(
        [p for p, _, _ in items], labels, splits, names, out_folder, size=size, groups=group, desc=root.name
    )


def from_manifest(
    manifest: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
) -> Path:
    """Convert the images listed in a ``path, label[, caption, split, group]`` CSV to the canonical store."""
    manifest = Path(manifest)
    table = read_table(manifest, ["path", "label"])
    if table.empty:
        raise DatasetError(f"{manifest}: the manifest lists no images")
    paths = [manifest.parent / p for p in table["path"]]  # an absolute path stays absolute
    empty = table.index[table["label"] == ""]
    if len(empty):
        raise DatasetError(f"{manifest}: empty label for {table['path'][empty[0]]}")
    names, labels = class_indices(table["label"].tolist(), table["path"].tolist(), classes, manifest)
    if "split" in table.columns:
        splits = [split_name(s, f"{manifest} ({p})") for s, p in zip(table["split"], table["path"])]
    else:
        splits = stratified_splits(labels, fractions, seed)
    captions = table["caption"].tolist() if "caption" in table.columns else None
    groups = table["group"].tolist() if "group" in table.columns else ""
    return write_image_dataset(
        paths, labels, splits, names, out_folder, size=size, captions=captions, groups=groups, desc=manifest.name
    )


def prepare_image_folder(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of ``source: image_folder`` (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path, size_and_seed

    from_image_folder(dataset_path(spec), out_dir, classes=spec.get("classes"), **size_and_seed(spec))


def prepare_manifest(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of ``source: manifest`` (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path, size_and_seed

    from_manifest(dataset_path(spec), out_dir, classes=spec.get("classes"), **size_and_seed(spec))
