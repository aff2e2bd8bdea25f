"""The canonical dataset store every source converts to.

A dataset is a folder holding ``images.npy`` (uint8, N x H x W x 3, memory-mapped
on read) and ``samples.csv`` with the columns in :data:`SAMPLE_COLUMNS`; the row
``index`` is the position of the image in the array. Nothing downstream knows
where the data came from.

Large stores (PCam: 327,680 images, 9 GB at 96 px) are written and streamed with
plain file reads and writes (:func:`image_writer`, :func:`read_rows`) rather than
through a memory map: every page of a mapping a process touches counts in its
resident memory (RSS) until the kernel reclaims it, so a job streaming the whole
store through a map shows 9 GB of RSS to Snakemake's benchmark and to SLURM's
accounting, though it needs a few batches of it at a time.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from medtune.io import atomic_path, write_csv

SAMPLE_COLUMNS = ["index", "split", "label", "label_name", "caption", "group"]
# optional: the centre (hospital, scanner) an image comes from, for the centre-shift study;
# written after SAMPLE_COLUMNS when a source knows it, absent otherwise
SITE = "site"
SPLITS = ("pretrain", "train", "val", "test")


class DatasetError(ValueError):
    """Bad dataset content; the message names the file and the culprit."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 N x H x W x 3 (usually a read-only memmap)
    samples: pd.DataFrame
    where: str = "dataset"  # the store's folder, for messages

    @property
    def class_names(self) -> list[str]:
        pairs = self.samples[["label", "label_name"]].drop_duplicates().sort_values("label")
        return pairs["label_name"].tolist()

    def split(self, name: str) -> pd.DataFrame:
        rows = self.samples[self.samples["split"] == name]
        if rows.empty:
            raise DatasetError(f"{self.where}: split {name!r} has no samples")
        return rows


def validate_samples(samples: pd.DataFrame, n_images: int, source: str) -> None:
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise DatasetError(f"{source}: samples table lacks column(s) {missing}")
    if len(samples) != n_images:
        raise DatasetError(f"{source}: {n_images} images but {len(samples)} sample rows")
    if not np.array_equal(samples["index"].to_numpy(), np.arange(n_images)):
        raise DatasetError(f"{source}: sample 'index' must be 0..N-1 in order")
    bad_split = sorted(set(samples["split"]) - set(SPLITS))
    if bad_split:
        raise DatasetError(f"{source}: unknown split(s) {bad_split}; expected {list(SPLITS)}")
    if samples["label"].nunique() < 2:
        only = samples["label_name"].iloc[0] if len(samples) else "none"
        raise DatasetError(f"{source}: one class only ({only!r}, {len(samples)} images): classification needs at least two")
    names = samples.groupby("label")["label_name"].nunique()
    if (names > 1).any():
        raise DatasetError(f"{source}: label {int(names[names > 1].index[0])} has several label_names")
    labels = np.sort(samples["label"].unique())
    if not np.array_equal(labels, np.arange(len(labels))):  # class names are read back in label order
        missing = sorted(set(range(int(labels.max()) + 1)) - set(labels.tolist()))
        raise DatasetError(f"{source}: labels must be 0..{len(labels) - 1} with a sample each; no sample has label {missing[0]}")


EVALUATED = ("train", "val", "test")


def check_evaluable(samples: pd.DataFrame, source: str) -> None:
    """Refuse, at preparation, a store that training and evaluation would turn into numbers that
    contradict each other: a class without a train or a test image (its recall is zero while
    accuracy ignores it, its AUC is undefined) or no validation image at all (model selection
    has nothing to select on). Every such class is named with its counts. A store without
    train, val or test rows (pretraining pairs only) is not evaluated and passes."""
    if not samples["split"].isin(EVALUATED).any():
        return
    counts = pd.crosstab(samples["label_name"], samples["split"]).reindex(columns=list(EVALUATED), fill_value=0)
    short = counts[(counts["train"] == 0) | (counts["test"] == 0)]
    if len(short):
        listed = "; ".join(f"{name!r}: {row.train} train, {row.val} val, {row.test} test" for name, row in short.head(5).iterrows())
        more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
        raise DatasetError(
            f"{source}: {len(short)} of {len(counts)} classes lack a train or a test image ({listed}{more}); every class "
            "needs both (a drawn 70/10/20 % split gives them from 3 images a class): add images or remove these classes"
        )
    if counts["val"].sum() == 0:
        sizes = counts.sum(axis=1)
        raise DatasetError(
            f"{source}: no validation image in any of the {len(counts)} classes (they have {sizes.min()} to {sizes.max()} "
            "images: a drawn split's 10 % validation share of so small a class rounds to none): add images, or give "
            "a val split (split folders or a split column)"
        )


def write_dataset(images: np.ndarray, samples: pd.DataFrame, folder: str | Path) -> None:
    folder = Path(folder)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{folder}: images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    validate_samples(samples, len(images), str(folder))
    with image_writer(folder, images.shape) as out:
        out[:] = images
    write_samples(samples, len(images), folder)


class RowWriter:
    """Writes rows of a ``.npy`` file in place, ``out[i] = image`` or ``out[start:stop] = images``,
    with ``os.pwrite``: the written pages go to the page cache, not into the writer's RSS."""

    def __init__(self, fd: int, offset: int, shape: tuple[int, ...]) -> None:
        self.fd, self.offset, self.shape = fd, offset, tuple(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, key: int | slice, value: np.ndarray) -> None:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError(f"rows are written in runs; got step {step}")
        else:
            start = int(key) + len(self) if int(key) < 0 else int(key)
            stop = start + 1
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} outside 0:{len(self)}")
        rows = np.ascontiguousarray(value, dtype=np.uint8).reshape(-1, *self.shape[1:])
        if len(rows) != stop - start:
            raise ValueError(f"{len(rows)} rows given for rows {start}:{stop}")
        data = memoryview(rows.reshape(-1))
        position, done = self.offset + start * self.row_bytes, 0
        while done < len(data):  # pwrite may write less than asked
            done += os.pwrite(self.fd, data[done:], position + done)

    def keep_rows(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (ascending), in place: each moves forward over a dropped one, the
        ``.npy`` header takes the smaller shape (padded to its old length, so the data stay where
        they are) and the file is cut after the last row kept."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(self)):
            raise ValueError("rows to keep must be ascending row numbers of the file")
        for new, old in enumerate(rows.tolist()):
            if new != old:
                data = os.pread(self.fd, self.row_bytes, self.offset + old * self.row_bytes)
                os.pwrite(self.fd, data, self.offset + new * self.row_bytes)
        self.shape = (len(rows), *self.shape[1:])
        major = os.pread(self.fd, 1, 6)[0]  # .npy format version: a 2-byte header length in 1.0, 4 bytes after
        start = 10 if major == 1 else 12
        text = repr({"descr": "|u1", "fortran_order": False, "shape": self.shape})
        os.pwrite(self.fd, (text.ljust(self.offset - start - 1) + "\n").encode("latin1"), start)
        os.ftruncate(self.fd, self.offset + len(rows) * self.row_bytes)


@contextlib.contextmanager
def image_writer(folder: str | Path, shape: tuple[int, int, int, int]) -> Iterator[RowWriter]:
    """A :class:`RowWriter` for sources too large to hold in memory (PCam train).

    Fill it chunk by chunk inside the ``with``; ``images.npy`` appears only when
    the block finishes without error.
    """
    folder = Path(folder)
    with atomic_path(folder / "images.npy") as tmp:
        # numpy writes the header and sizes the file; the map is dropped untouched
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        offset = header.offset
        del header
        fd = os.open(tmp, os.O_RDWR)
        try:
            yield RowWriter(fd, offset, shape)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_rows(images: np.ndarray, indices: np.ndarray | slice) -> np.ndarray:
    """``images[indices]`` as an array in memory.

    A memory-mapped store is read with ``os.pread``, one call per run of consecutive
    rows, so a job that streams it batch by batch holds one batch in its RSS instead
    of every page it has read (see the module's docstring). Other arrays are indexed.
    """
    filename = getattr(images, "filename", None)
    # only a whole mapping (a slice of one keeps its parent's offset) of a C-ordered file
    if not isinstance(images, np.memmap) or not isinstance(images.base, mmap.mmap) or not images.flags.c_contiguous:
        return np.asarray(images[indices])
    rows = np.arange(len(images))[indices] if isinstance(indices, slice) else np.asarray(indices, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < -len(images) or rows.max() >= len(images)):
        raise IndexError(f"row index out of range 0:{len(images)} in {filename}")
    rows = np.where(rows < 0, rows + len(images), rows)
    out = np.empty((len(rows), *images.shape[1:]), dtype=images.dtype)
    row_bytes = out[0].nbytes if len(rows) else 0
    # runs of consecutive rows: one read each
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, len(rows)]
    flat = memoryview(out.reshape(-1).view(np.uint8))
    with open(filename, "rb", buffering=0) as fh:
        for a, b in zip(starts.tolist(), stops.tolist()):
            if a == b:
                continue
            position, want = images.offset + int(rows[a]) * row_bytes, (b - a) * row_bytes
            target, done = flat[a * row_bytes : b * row_bytes], 0
            while done < want:
                got = os.preadv(fh.fileno(), [target[done:]], position + done)
                if got == 0:
                    raise DatasetError(f"{filename}: file ends before row {int(rows[a]) + (done // row_bytes)}")
                done += got
    return out


def write_samples(samples: pd.DataFrame, n_images: int, folder: str | Path) -> None:
    validate_samples(samples, n_images, str(folder))
    columns = SAMPLE_COLUMNS + ([SITE] if SITE in samples.columns else [])
    if SITE in samples.columns and (samples[SITE].astype(str) == "").any():
        raise DatasetError(f"{folder}: sample {int(samples.loc[samples[SITE].astype(str) == '', 'index'].iloc[0])} has an empty site")
    write_csv(samples[columns], Path(folder) / "samples.csv")


def read_samples(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """samples.csv, or only ``columns`` of it (PCam's 327,680 captions are most of the file)."""
    dtype = {"caption": str, "group": str, "label_name": str, SITE: str}
    try:
        return pd.read_csv(path, keep_default_na=False, dtype=dtype, usecols=columns)
    except ValueError as err:  # a column asked for is absent
        if columns is None or "Usecols do not match columns" not in str(err):
            raise
        raise DatasetError(f"{path}: {err}") from None


def load_dataset(folder: str | Path) -> Dataset:
    folder = Path(folder)
    images = np.load(folder / "images.npy", mmap_mode="r")
    samples = read_samples(folder / "samples.csv")
    validate_samples(samples, len(images), str(folder))
    return Dataset(images=images, samples=samples, where=str(folder))
