"""PatchCamelyon (PCam): fetch the Zenodo HDF5 files and convert them to the store.

:func:`fetch` downloads each ``.h5.gz`` (resumable, MD5-verified) and gunzips it.
Files placed in the folder by hand are used first and never downloaded over: a
placed ``.h5.gz`` is checked against the published MD5 and a mismatch stops with
one line naming the file and both sums. To use a copy on purpose, give its sum in
the dataset's ``md5: {file name: sum}`` (which can also name an unpacked ``.h5``;
a placed ``.h5`` is otherwise used as it is, since only the ``.h5.gz`` sums are
published) or set ``verify: false``.
:func:`convert` copies the HDF5 ``x`` (N x 96 x 96 x 3 uint8) and ``y``
(N x 1 x 1 x 1) datasets chunk by chunk into :func:`~medtune.data.store.image_writer`,
so the 7 GB training set never sits in memory. PCam's ``train/valid/test``
become the store's ``train/val/test``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from medtune.data.convert import samples_table
from medtune.data.download import ChecksumError, download, file_md5, gunzip
from medtune.data.store import DatasetError, image_writer, write_samples

ZENODO = "https://zenodo.org/records/2546921/files"
PCAM_SPLITS = ("train", "valid", "test")
SPLIT_MAP = {"train": "train", "valid": "val", "test": "test"}
CLASS_NAMES = ("normal", "tumor")
GROUP = "lymph node"
CHUNK = 4096
# MD5 of the .h5.gz files (the upstream README swaps valid and test; these are right).
MD5 = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
}


def prepare_source(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function (:mod:`medtune.data.sources`): fetch into ``path``, then convert."""
    from medtune.data.sources import dataset_path

    raw = dataset_path(spec)
    md5s = {**MD5, **spec.get("md5", {})}
    verify = spec.get("verify", True)
    fetch(raw, base_url=spec.get("url", ZENODO), md5s=md5s, verify=verify, config_key=f"datasets.{name}")
    convert(raw, out_dir)


def h5_name(split: str, part: str) -> str:
    """File name of one PCam HDF5 file, ``part`` being ``x`` (images) or ``y`` (labels)."""
    if split not in PCAM_SPLITS or part not in ("x", "y"):
        raise DatasetError(f"unknown PCam file {split!r}/{part!r}; splits are {list(PCAM_SPLITS)}, parts x/y")
    return f"camelyonpatch_level_2_split_{split}_{part}.h5"


def file_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}?download=1"


def fetch(
    raw_dir: str | os.PathLike,
    base_url: str = ZENODO,
    splits: Sequence[str] = PCAM_SPLITS,
    *,
    md5s: Mapping[str, str] = MD5,
    verify: bool = True,
    keep_gz: bool = True,
    config_key: str = "the dataset",
) -> list[Path]:
    """The x/y ``.h5`` files of ``splits``: placed ones checked, missing ones downloaded, verified and gunzipped.

    ``md5s`` maps file names (``.h5.gz`` or ``.h5``) to their expected MD5; with
    ``verify=False`` no sum is checked. ``config_key`` is where a message tells the
    user to accept a placed copy.
    """
    raw_dir = Path(raw_dir)
    paths = []
    for split in splits:
        for part in ("x", "y"):
            h5 = raw_dir / h5_name(split, part)
            gz = raw_dir / (h5.name + ".gz")
            if h5.exists():
                check_placed(h5, md5s.get(h5.name) if verify else None, config_key)
            else:
                expected = md5s.get(gz.name) if verify else None
                if gz.exists():
                    check_placed(gz, expected, config_key)
                else:
                    fetch_verified(file_url(base_url, gz.name), gz, expected, config_key)
                gunzip(gz, h5)
                if not keep_gz:
                    gz.unlink()
            paths.append(h5)
    return paths


def fetch_verified(url: str, dest: Path, expected: str | None, config_key: str) -> None:
    """Download ``dest``; a complete download with another MD5 says what to change, since a
    mirror that serves other bytes serves them again on a rerun."""
    try:
        download(url, dest, md5=expected)
    except ChecksumError as err:
        raise DatasetError(
            f"{dest}: {url} served bytes with MD5 {err.found}, not the expected {err.expected} (a rerun downloads it "
            f"again: that helps only if the transfer was corrupted); if the url: under {config_key} is a mirror with "
            f"another copy, accept it with md5: {{{dest.name}: {err.found}}} (or verify: false), else drop url: to "
            f"download from {ZENODO}"
        ) from None


def check_placed(path: Path, expected: str | None, config_key: str) -> None:
    """Refuse a file whose MD5 is not ``expected`` (when one is given), naming both sums and the way out."""
    if expected is None:
        return
    found = file_md5(path)
    if found != expected.lower():
        raise DatasetError(
            f"{path}: MD5 {found} differs from the expected {expected.lower()}; to use this copy anyway "
            f"set md5: {{{path.name}: {found}}} (or verify: false) under {config_key} in the config"
        )


def convert(
    raw_dir: str | os.PathLike,
    out_folder: str | os.PathLike,
    splits: Sequence[str] = PCAM_SPLITS,
    chunk_size: int = CHUNK,
) -> Path:
    """Copy the PCam HDF5 files of ``splits`` into the canonical store, ``chunk_size`` images at a time."""
    raw_dir, out_folder = Path(raw_dir), Path(out_folder)
    with contextlib.ExitStack() as stack:
        pairs = [(split, *open_split(stack, raw_dir, split)) for split in splits]
        shape = image_shape([x for _, x, _ in pairs])
        total = sum(len(x) for _, x, _ in pairs)
        labels, split_names = [], []
        with image_writer(out_folder, (total, *shape)) as out:
            start = 0
            for split, x, y in pairs:
                labels.append(copy_split(x, y, out, start, chunk_size))
                split_names += [SPLIT_MAP[split]] * len(x)
                start += len(x)
    samples = samples_table(np.concatenate(labels), split_names, CLASS_NAMES, groups=GROUP)
    write_samples(samples, total, out_folder)
    return out_folder


def open_split(stack: contextlib.ExitStack, raw_dir: Path, split: str) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The ``x`` and ``y`` datasets of one split, checked for shape and matching counts."""
    x = open_dataset(stack, raw_dir / h5_name(split, "x"), "x")
    y = open_dataset(stack, raw_dir / h5_name(split, "y"), "y")
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{x.file.filename}: 'x' must be uint8 N x H x W x 3, got {x.dtype} {x.shape}")
    if len(y) != len(x) or y.size != len(y):
        raise DatasetError(
            f"{y.file.filename}: 'y' has shape {y.shape} but {x.file.filename} holds {len(x)} images "
            "(one label each expected)"
        )
    return x, y


def open_dataset(stack: contextlib.ExitStack, path: Path, key: str) -> h5py.Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: missing PCam file; run medtune.data.pcam.fetch or place it there")
    try:
        handle = stack.enter_context(h5py.File(path, "r"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open HDF5 file (truncated or corrupt?): {exc}") from None
    if key not in handle:
        raise DatasetError(f"{path}: no dataset {key!r} (found {sorted(handle.keys())})")
    return handle[key]


def image_shape(xs: Sequence[h5py.Dataset]) -> tuple[int, int, int]:
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) != 1:
        raise DatasetError(f"PCam files disagree on image shape: {sorted(shapes)}")
    return shapes.pop()


def copy_split(x: h5py.Dataset, y: h5py.Dataset, out: np.ndarray, start: int, chunk_size: int) -> np.ndarray:
    """Copy ``x`` into ``out[start:]`` chunk by chunk; return the labels as int64."""
    labels = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), chunk_size):
        hi = min(lo + chunk_size, len(x))
        out[start + lo : start + hi] = read_chunk(x, lo, hi)
        labels[lo:hi] = read_chunk(y, lo, hi).reshape(-1)
    bad = np.setdiff1d(np.unique(labels), [0, 1])
    if bad.size:
        raise DatasetError(f"{y.file.filename}: labels must be 0/1, found {bad.tolist()}")
    return labels


def read_chunk(data: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
    try:
        return data[lo:hi]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{data.file.filename}: cannot read rows {lo}:{hi} (truncated or corrupt?): {exc}") from None
