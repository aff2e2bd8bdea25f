"""Bring-your-own data: an image folder per class, or a CSV manifest.

(a) :func:`from_image_folder`: ``root/<class>/*.png``, or with top-level split
folders ``root/{train,val,test}/<class>/*.png``; without split folders the
splits are a seeded, class-stratified draw by ``fractions``. Folder names become
class names and must be UTF-8.

(b) :func:`from_manifest`: a CSV with columns ``path, label`` and optionally
``caption, split, group, site`` (``site``: the centre an image comes from, for the
centre-shift study; an image folder names one for all its images with the ``site`` key).
A relative path is relative to the manifest's folder and must stay inside it, links
resolved (``../../etc/passwd``, or a link in the folder to a file outside it, is refused);
an absolute path is read where it points. Each row must name a regular file (not a FIFO
or a device).
A row repeating an earlier row for the same file (the same resolved path) in every
column is dropped with a warning; the same file with any other difference (label,
split, caption, group) is refused naming both lines, since one image in two rows
would land in train and test alike. Lines are numbered as in the file, the header
being line 1.

With split folders or a ``split`` column that give train and test but no
validation split, a seeded, class-stratified 10 % of train becomes ``val``
(:func:`~medtune.data.convert.carve_missing_validation`, logged).

Classes are sorted by name unless a class list is given (its order then sets
the label indices); a class outside a given list is an error naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from medtune.data.convert import (
    DEFAULT_FRACTIONS,
    DEFAULT_SIZE,
    carve_missing_validation,
    check_regular_file,
    list_images,
    read_table,
    stratified_splits,
    write_image_dataset,
)
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

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
    folded: dict[str, str] = {}
    for name in sorted(set(found)):  # 'Tumor' and 'tumor' would be two classes of one tissue
        key = " ".join(name.casefold().split())
        if key in folded:
            raise DatasetError(f"{source}: labels {folded[key]!r} and {name!r} differ only in case or spaces; "
                               "write one spelling (they would be two classes)")
        folded[key] = name
    index = {name: i for i, name in enumerate(names)}
    for value, item in zip(found, items):
        if value not in index:
            raise DatasetError(f"{source}: label {value!r} of {item} is not in the class list {names}")
    unused = [name for name in names if name not in set(found)]
    if unused:  # its label index would be a gap, and every later class's prompt would score the wrong images
        raise DatasetError(f"{source}: class {unused[0]!r} of the class list {names} has no images "
                           f"({len(unused)} such); add its images or leave it out of classes:")
    return names, [index[value] for value in found]


def split_name(value: str, where: str) -> str:
    if value.lower() not in SPLIT_ALIASES:
        raise DatasetError(f"{where}: unknown split {value!r} (expected one of {sorted(SPLIT_ALIASES)})")
    return SPLIT_ALIASES[value.lower()]


def subfolders(folder: Path) -> list[Path]:
    """The visible folders in ``folder``; a name that is not UTF-8 (a class name to be) is refused
    here, before any image is decoded, rather than when samples.csv is written."""
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in found:
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError(
                f"{folder}: the folder name {os.fsencode(path.name)!r} is not valid UTF-8; folder names become class "
                "names in samples.csv and the tables: rename it (e.g. convmv -f latin1 -t utf-8)"
            ) from None
    return found


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
    site: str | None = None,
) -> Path:
    """Convert ``root/[split/]class/image`` files to the canonical store (``site``: the centre every image comes from)."""
    root = Path(root)
    items = scan_image_folder(root)
    if not items:
        raise DatasetError(f"{root}: no images found in class folders")
    names, labels = class_indices([c for _, _, c in items], [p for p, _, _ in items], classes, root)
    if items[0][1] is None:
        splits = stratified_splits(labels, fractions, seed)
    else:
        splits = carve_missing_validation(labels, [s for _, s, _ in items], seed, str(root))
    return write_image_dataset(
        [p for p, _, _ in items], labels, splits, names, out_folder, size=size, groups=group, sites=site, desc=root.name
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
    """Convert the images listed in a ``path, label[, caption, split, group, site]`` CSV to the canonical store."""
    manifest = Path(manifest)
    table = read_table(manifest, ["path", "label"])
    if table.empty:
        raise DatasetError(f"{manifest}: the manifest lists no images")
    table = without_duplicate_rows(table, manifest_paths(table, manifest), manifest)
    paths = [manifest.parent / p for p in table["path"]]  # an absolute path stays absolute
    empty = table.index[table["label"] == ""]
    if len(empty):
        raise DatasetError(f"{manifest}: empty label for {table['path'][empty[0]]}")
    names, labels = class_indices(table["label"].tolist(), table["path"].tolist(), classes, manifest)
    if "split" in table.columns:
        splits = [split_name(s, f"{manifest} ({p})") for s, p in zip(table["split"], table["path"])]
        splits = carve_missing_validation(labels, splits, seed, str(manifest))
    else:
        splits = stratified_splits(labels, fractions, seed)
    captions = table["caption"].tolist() if "caption" in table.columns else None
    groups = table["group"].tolist() if "group" in table.columns else ""
    sites = table["site"].tolist() if "site" in table.columns else None
    if sites is not None and "" in sites:
        row = table.index[table["site"] == ""][0]
        raise DatasetError(f"{manifest_line(manifest, row, table.at[row, 'path'])}: empty site (give every image its centre, or drop the column)")
    return write_image_dataset(
        paths, labels, splits, names, out_folder, size=size, captions=captions, groups=groups, sites=sites, desc=manifest.name
    )


def manifest_line(manifest: Path, row: int, path: str) -> str:
    return f"{manifest} line {row + 2} ({path!r})"  # the header is line 1


def manifest_paths(table: pd.DataFrame, manifest: Path) -> list[Path]:
    """Each row's file, refused when a relative path leaves the manifest's folder or is no regular file.

    A missing file is left to the image reader, which names it.
    """
    folder = manifest.parent
    out = []
    for row, text in zip(table.index, table["path"]):
        where = manifest_line(manifest, row, text)
        if not text:
            raise DatasetError(f"{where}: empty path")
        path = folder / text
        if not os.path.isabs(text):
            normal = os.path.normpath(text)
            if normal == os.pardir or normal.startswith(os.pardir + os.sep):
                raise DatasetError(
                    f"{where}: the relative path leads outside the manifest's folder {folder}; "
                    "write an absolute path to read a file elsewhere"
                )
            real, inside = os.path.realpath(path), os.path.realpath(folder)
            if os.path.commonpath([real, inside]) != inside:  # a link that leads out
                raise DatasetError(
                    f"{where}: the relative path is a link to {real}, outside the manifest's folder {folder}; "
                    "write an absolute path to read a file elsewhere"
                )
        try:
            st = path.stat()
        except FileNotFoundError:
            if "\\" in text and os.sep == "/":
                raise DatasetError(f"{where}: no such file {path}; write '/' between folders, not '\\'") from None
            st = None
        except OSError as exc:
            raise DatasetError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if st is not None:
            check_regular_file(st, where)
        out.append(path)
    return out


def without_duplicate_rows(table: pd.DataFrame, paths: Sequence[Path], manifest: Path) -> pd.DataFrame:
    """``table`` less the rows that repeat an earlier row for the same file; a conflicting repeat is an error."""
    first: dict[str, int] = {}
    dropped = []
    for row, path in zip(table.index, paths):
        key = os.path.realpath(path)
        if key not in first:
            first[key] = row
            continue
        earlier = first[key]
        differs = [c for c in table.columns if c != "path" and table.at[row, c] != table.at[earlier, c]]
        if differs:
            col = differs[0]
            raise DatasetError(
                f"{manifest}: lines {earlier + 2} and {row + 2} list the same image {table.at[row, 'path']!r} "
                f"with different {col} ({table.at[earlier, col]!r} vs {table.at[row, col]!r}); "
                "keep one row per image, or it leaks between splits"
            )
        dropped.append(row)
    if dropped:
        shown = ", ".join(str(row + 2) for row in dropped[:10]) + (", ..." if len(dropped) > 10 else "")
        log.warning("%s: dropped %d row(s) repeating an earlier row for the same image (lines %s)",
                    manifest, len(dropped), shown)
    return table.drop(index=dropped)


def prepare_image_folder(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of ``source: image_folder`` (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path, size_and_seed

    from_image_folder(dataset_path(spec), out_dir, classes=spec.get("classes"), site=spec.get("site"), **size_and_seed(spec))


def prepare_manifest(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of ``source: manifest`` (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path, size_and_seed

    from_manifest(dataset_path(spec), out_dir, classes=spec.get("classes"), **size_and_seed(spec))
