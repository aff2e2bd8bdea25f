"""Camelyon17-WILDS (Koh et al. 2021; ``p-lambda/wilds``, ``wilds/datasets/camelyon17_dataset.py``)
in its published layout: ``{path}/metadata.csv`` and ``{path}/patches/``.

96 x 96 lymph-node patches from five hospitals, labelled tumour (1) or not (0) by their
centre 32 x 32 pixels. ``metadata.csv`` has an unnamed index column and ``patient, node,
x_coord, y_coord, tumor, slide, center, split``; a patch lives at
``patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png``
(``patient`` is a zero-padded string, as WILDS reads it).

Splits as the WILDS code makes them (its ``official`` scheme): hospital 1 is the (out-of-
distribution) validation split, hospital 2 the test split, and hospitals 0, 3 and 4 the
training split: 302,436 / 34,904 / 85,054 patches. The file's ``split`` column marks 10 % of
the training hospitals' patches (``split == 1``: 33,560 patches) as WILDS' in-distribution
validation split, ``id_val``; medtune has no fifth split, so ``id_val: drop`` (the default)
leaves them out, and ``id_val: val`` adds them to the validation split, where the centre-shift
study finds in-centre held-out images (their hospitals are the training split's). Every
patch's hospital is its ``site`` (``hospital0`` ... ``hospital4``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medtune.data.convert import read_table, write_image_dataset
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

CLASSES = ["normal", "tumor"]  # the tumor column's 0 and 1
VAL_CENTER, TEST_CENTER = 1, 2  # WILDS' VAL_CENTER and TEST_CENTER
ID_VAL = 1  # metadata.csv's split value of the in-distribution validation patches
COLUMNS = ["patient", "node", "x_coord", "y_coord", "tumor", "center", "split"]
NATIVE_SIZE = 96
HOW_TO_GET = (
    "download Camelyon17-WILDS v1.0 (e.g. `wilds.get_dataset('camelyon17', download=True)` from the wilds package, "
    "or its archive from the WILDS site) and place its metadata.csv and patches/ folder there"
)


def patch_path(patient: str, node: str, x: str, y: str) -> str:
    """A patch's file, relative to the dataset folder, as ``Camelyon17Dataset._input_array`` names it."""
    return f"patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"


def wilds_splits(center: np.ndarray, split: np.ndarray, id_val: str = "drop") -> np.ndarray:
    """medtune's split of every patch (None: left out), from its hospital and metadata.csv's split."""
    out = np.where(split == ID_VAL, None if id_val == "drop" else id_val, "train").astype(object)
    out[center == VAL_CENTER] = "val"
    out[center == TEST_CENTER] = "test"
    return out


def prepare_source(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function of ``source: camelyon17`` (:mod:`medtune.data.sources`)."""
    from medtune.data.sources import dataset_path

    root = dataset_path(spec)
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise DatasetError(f"{metadata} not found: {HOW_TO_GET}")
    table = read_table(metadata, COLUMNS)
    try:
        center, split, tumor = (table[c].astype(int).to_numpy() for c in ("center", "split", "tumor"))
    except ValueError as err:
        raise DatasetError(f"{metadata}: center, split and tumor must be integers ({err})") from None
    bad = np.flatnonzero(~np.isin(tumor, (0, 1)))
    if len(bad):
        raise DatasetError(f"{metadata} line {bad[0] + 2}: tumor is {tumor[bad[0]]}, expected 0 or 1")
    splits = wilds_splits(center, split, spec.get("id_val", "drop"))
    kept = np.flatnonzero(splits != None)  # noqa: E711  (an object array compared element-wise)
    rows = table.iloc[kept]
    for medtune_split in ("train", "val", "test"):
        chosen = splits[kept] == medtune_split
        hospitals = sorted(set(center[kept][chosen]))
        log.info("%s: %s split: %d patches from hospital(s) %s", metadata, medtune_split, int(chosen.sum()), hospitals)
    if spec.get("id_val", "drop") == "drop":
        log.info("%s: left out %d in-distribution validation patches (split == 1; id_val: drop)", metadata, int(len(table) - len(kept)))
    paths = [root / patch_path(*values) for values in rows[["patient", "node", "x_coord", "y_coord"]].itertuples(index=False)]
    write_image_dataset(
        paths, tumor[kept], list(splits[kept]), CLASSES, out_dir, size=spec.get("image_size", NATIVE_SIZE),
        sites=[f"hospital{c}" for c in center[kept]], desc=name,
    )
