"""Gated datasets the user downloads by hand: MHIST, Osteosarcoma, WSSS4LUAD.

Each dataset has a ``check_*(folder)`` that raises :class:`MissingDataError`
with one line saying what is missing, where to get it and where to put it, and
a ``convert_*(folder, out_folder, ...)`` that turns the placed files into the
canonical store through :func:`medtune.data.convert.write_image_dataset`
(resized to ``size`` x ``size``; a corrupt image or an unknown label stops the
conversion with the file named).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from medtune.data.archives import ArchiveError, read_zip_member
from medtune.data.convert import (
    DEFAULT_FRACTIONS,
    DEFAULT_SIZE,
    IMAGE_EXTENSIONS,
    ImageRef,
    ImageSource,
    carve_validation,
    is_image_name,
    list_images,
    read_table,
    source_name,
    stratified_splits,
    write_image_dataset,
)
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

MHIST_PAGE = "https://bmirds.github.io/MHIST/"
OSTEO_PAGE = "https://doi.org/10.7937/tcia.2019.bvhjhdas"
WSSS_PAGE = "https://wsss4luad.grand-challenge.org/"

MHIST_ANNOTATIONS = "annotations.csv"
MHIST_ZIP = "images.zip"
MHIST_DIR = "images"
MHIST_CLASSES = {"HP": "hyperplastic polyp", "SSA": "sessile serrated adenoma"}

OSTEO_CSV = "ML_Features_1144.csv"
OSTEO_CLASSES = {
    "Non-Tumor": "non-tumor",
    "Non-Viable-Tumor": "non-viable necrotic tumor",
    "Viable": "viable tumor",
    "viable: non-viable": "viable tumor",
}

WSSS_CLASSES = {(0, 0, 1): "normal", (1, 0, 0): "tumor"}
WSSS_LABEL = re.compile(r"\[\s*(\d)\s*,\s*(\d)\s*,\s*(\d)\s*\]$")


class MissingDataError(DatasetError):
    """User-placed data is absent; the message says what to download, from where, to where."""


def class_order(mapping: Mapping) -> list[str]:
    """Class names in the order of their first appearance among the mapping's values."""
    return list(dict.fromkeys(mapping.values()))


def map_labels(values: Sequence[str], names: Sequence[str], mapping: Mapping[str, str], source: Path) -> list[int]:
    """Class index per value through ``mapping`` (keys matched case-insensitively)."""
    lookup = {str(k).strip().lower(): v for k, v in mapping.items()}
    order = {name: i for i, name in enumerate(class_order(mapping))}
    out = []
    for value, name in zip(values, names):
        if value.lower() not in lookup:
            raise DatasetError(f"{source}: unknown label {value!r} for {name} (known: {list(mapping)})")
        out.append(order[lookup[value.lower()]])
    return out


def index_by_key(items: Sequence[tuple[str, ImageSource]]) -> dict[str, list[ImageSource]]:
    """``{key: [sources]}``; a key with several sources is an error only when looked up."""
    index: dict[str, list[ImageSource]] = {}
    for key, source in items:
        index.setdefault(key, []).append(source)
    return index


def lookup_image(index: Mapping[str, list[ImageSource]], key: str, where: Path) -> ImageSource:
    found = index.get(key, [])
    if not found:
        raise DatasetError(f"{where}: no image {key!r}, which the label file lists")
    if len(found) > 1:
        names = [source_name(s) for s in found]
        raise DatasetError(f"{where}: several images match {key!r}: {names}")
    return found[0]


# --------------------------------------------------------------------------- MHIST


def check_mhist(folder: str | os.PathLike) -> Path:
    """The MHIST image source (``images/`` folder or ``images.zip``); raise when files are missing."""
    folder = Path(folder)
    images = folder / MHIST_DIR if (folder / MHIST_DIR).is_dir() else folder / MHIST_ZIP
    missing = [p.name for p in (folder / MHIST_ANNOTATIONS, images) if not p.exists()]
    if missing:
        raise MissingDataError(
            f"MHIST: missing {', '.join(missing)} in {folder}/ — fill the form at {MHIST_PAGE}, download "
            f"{MHIST_ZIP} and {MHIST_ANNOTATIONS} and put both in {folder}/ "
            f"(or extract {MHIST_ZIP} to {folder / MHIST_DIR}/)"
        )
    return images


def convert_mhist(
    folder: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    size: int = DEFAULT_SIZE,
    classes: Mapping[str, str] = MHIST_CLASSES,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Path:
    """MHIST with its official train/test partition and a seeded, stratified val carved from train."""
    folder = Path(folder)
    images = check_mhist(folder)
    table = read_table(folder / MHIST_ANNOTATIONS, ["Image Name", "Majority Vote Label", "Partition"])
    names = table["Image Name"].tolist()
    labels = map_labels(table["Majority Vote Label"], names, classes, folder / MHIST_ANNOTATIONS)
    splits = mhist_partitions(table["Partition"], names, folder / MHIST_ANNOTATIONS)
    splits = carve_validation(labels, splits, val_fraction, seed)
    with mhist_images(images) as index:
        absent = [name for name in names if name not in index]
        if absent:  # an extraction cut short leaves a folder holding part of the images
            zipped = images.is_dir() and (folder / MHIST_ZIP).is_file()
            raise DatasetError(
                f"{images}: {len(absent)} of the {len(names)} images {MHIST_ANNOTATIONS} lists are not there "
                f"(e.g. {absent[0]!r}); was the extraction cut short? "
                + (f"Remove {images}/ to read {MHIST_ZIP} itself, or extract it again" if zipped else f"Place the complete {MHIST_ZIP}")
            )
        sources = [lookup_image(index, name, images) for name in names]
        return write_image_dataset(
            sources, labels, splits, class_order(classes), out_folder, size=size, groups="colon", desc="MHIST"
        )


def mhist_partitions(values: Sequence[str], names: Sequence[str], source: Path) -> list[str]:
    out = []
    for value, name in zip(values, names):
        if value.lower() not in ("train", "test"):
            raise DatasetError(f"{source}: unknown Partition {value!r} for {name} (expected train/test)")
        out.append(value.lower())
    return out


@contextlib.contextmanager
def mhist_images(images: Path) -> Iterator[dict[str, ImageSource]]:
    """``{file name: source}`` for an images folder, or for a zip kept open while converting."""
    if images.is_dir():
        yield index_by_key([(p.name, p) for p in list_images(images)])
        return
    try:
        zf = zipfile.ZipFile(images)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{images}: corrupt zip archive ({exc})") from None
    with zf:
        members = [m for m in zf.namelist() if is_image_name(m)]
        yield index_by_key(
            [(Path(m).name, ImageRef(f"{images}:{m}", functools.partial(read_zip_member, zf, m))) for m in members]
        )


# ---------------------------------------------------------------------- Osteosarcoma


def check_osteosarcoma(folder: str | os.PathLike) -> list[Path]:
    """The tile images under ``folder``; raise when the label file or the tiles are missing."""
    folder = Path(folder)
    tiles = list_images(folder) if folder.is_dir() else []
    missing = []
    if not (folder / OSTEO_CSV).is_file():
        missing.append(OSTEO_CSV)
    if not tiles:
        missing.append("the image tiles (.jpg)")
    if missing:
        raise MissingDataError(
            f"Osteosarcoma: missing {' and '.join(missing)} in {folder}/ — download the TCIA collection "
            f"Osteosarcoma-Tumor-Assessment ({OSTEO_PAGE}) and put {OSTEO_CSV} and the tile folders "
            f"(e.g. Training-Set-1/, Training-Set-2/) in {folder}/"
        )
    return tiles


def tile_key(name: str) -> str:
    """Match key for a tile: lower case, no image extension, runs of spaces/hyphens as one '-'.

    The label file writes ``Case 3 - A18-13`` where the file is ``Case-3-A18-13.jpg``.
    """
    name = name.strip()
    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        name = Path(name).stem
    return re.sub(r"[\s\-]+", "-", name.lower())


def convert_osteosarcoma(
    folder: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    size: int = DEFAULT_SIZE,
    classes: Mapping[str, str] = OSTEO_CLASSES,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Path:
    """Osteosarcoma tiles, labels mapped by ``classes``, split train/val/test by a seeded stratified draw."""
    folder = Path(folder)
    tiles = check_osteosarcoma(folder)
    table = read_table(folder / OSTEO_CSV, ["image.name", "classification"])
    names = table["image.name"].tolist()
    labels = map_labels(table["classification"], names, classes, folder / OSTEO_CSV)
    index = index_by_key([(tile_key(p.name), p) for p in tiles])
    sources = [lookup_image(index, tile_key(name), folder) for name in names]
    splits = stratified_splits(labels, fractions, seed)
    return write_image_dataset(
        sources, labels, splits, class_order(classes), out_folder, size=size, groups="bone", desc="Osteosarcoma"
    )


# ------------------------------------------------------------------------- WSSS4LUAD


def wsss_patches(folder: Path) -> list[tuple[Path, tuple[int, ...]]]:
    """Every PNG under ``folder`` whose name ends in ``[a, b, c]``, with that label tuple."""
    out = []
    for path in list_images(folder):
        match = WSSS_LABEL.search(path.stem)
        if match and path.suffix.lower() == ".png":
            out.append((path, tuple(int(v) for v in match.groups())))
    return out


def wsss_tag(key: tuple[int, ...] | str) -> tuple[int, ...]:
    """A label tuple from a tuple/list or a string such as ``"[1, 0, 0]"`` (as YAML config gives it)."""
    if isinstance(key, str):
        match = WSSS_LABEL.search(key.strip())
        if not match:
            raise DatasetError(f"WSSS4LUAD class key {key!r} is not like '[1, 0, 0]'")
        return tuple(int(v) for v in match.groups())
    return tuple(int(v) for v in key)


def check_wsss4luad(folder: str | os.PathLike) -> list[tuple[Path, tuple[int, ...]]]:
    """The labelled training patches under ``folder``; raise when there are none."""
    folder = Path(folder)
    patches = wsss_patches(folder) if folder.is_dir() else []
    if not patches:
        raise MissingDataError(
            f"WSSS4LUAD: no training patches named like '<id>-[1, 0, 0].png' in {folder}/ — register at "
            f"{WSSS_PAGE}, download the training set and extract its PNG patches into {folder}/ (sub-folders are fine)"
        )
    return patches


def convert_wsss4luad(
    folder: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    size: int = DEFAULT_SIZE,
    classes: Mapping[tuple[int, ...], str] = WSSS_CLASSES,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Path:
    """WSSS4LUAD patches reduced by ``classes`` ([tumor, stroma, normal] tuple -> name); others dropped with a count."""
    folder = Path(folder)
    patches = check_wsss4luad(folder)
    classes = {wsss_tag(k): v for k, v in classes.items()}
    kept = [(path, tag) for path, tag in patches if tag in classes]
    dropped = Counter(str(list(tag)) for _, tag in patches if tag not in classes)
    if dropped:
        log.warning(
            "WSSS4LUAD: dropped %d of %d patches with labels outside %s: %s",
            sum(dropped.values()),
            len(patches),
            [list(k) for k in classes],
            dict(dropped),
        )
    if not kept:
        raise DatasetError(f"{folder}: no WSSS4LUAD patch has a label in {[list(k) for k in classes]}")
    order = {name: i for i, name in enumerate(class_order(classes))}
    labels = [order[classes[tag]] for _, tag in kept]
    splits = stratified_splits(labels, fractions, seed)
    return write_image_dataset(
        [p for p, _ in kept],
        labels,
        splits,
        class_order(classes),
        out_folder,
        size=size,
        groups="lung",
        desc="WSSS4LUAD",
    )


CHECKS = {"mhist": check_mhist, "osteosarcoma": check_osteosarcoma, "wsss4luad": check_wsss4luad}
CONVERTERS = {"mhist": convert_mhist, "osteosarcoma": convert_osteosarcoma, "wsss4luad": convert_wsss4luad}


def prepare_source(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of the three gated sources (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path, size_and_seed

    extra = {"classes": spec["label_map"]} if "label_map" in spec else {}
    CONVERTERS[spec["source"]](dataset_path(spec), out_dir, **size_and_seed(spec), **extra)
