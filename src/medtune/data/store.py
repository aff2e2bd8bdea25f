"""The canonical dataset store every source converts to.

A dataset is a folder holding ``images.npy`` (uint8, N x H x W x 3, memory-mapped
on read) and ``samples.csv`` with the columns in :data:`SAMPLE_COLUMNS`; the row
``index`` is the position of the image in the array. Nothing downstream knows
where the data came from.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from medtune.io import atomic_path, write_csv

SAMPLE_COLUMNS = ["index", "split", "label", "label_name", "caption", "group"]
SPLITS = ("pretrain", "train", "val", "test")


class DatasetError(ValueError):
    """Bad dataset content; the message names the file and the culprit."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 N x H x W x 3 (usually a read-only memmap)
    samples: pd.DataFrame

    @property
    def class_names(self) -> list[str]:
        pairs = self.samples[["label", "label_name"]].drop_duplicates().sort_values("label")
        return pairs["label_name"].tolist()

    def split(self, name: str) -> pd.DataFrame:
        rows = self.samples[self.samples["split"] == name]
        if rows.empty:
            raise DatasetError(f"split {name!r} has no samples")
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


def write_dataset(images: np.ndarray, samples: pd.DataFrame, folder: str | Path) -> None:
    folder = Path(folder)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{folder}: images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    validate_samples(samples, len(images), str(folder))
    with image_writer(folder, images.shape) as out:
        out[:] = images
    write_samples(samples, len(images), folder)


@contextlib.contextmanager
def image_writer(folder: str | Path, shape: tuple[int, int, int, int]) -> Iterator[np.ndarray]:
    """A writable uint8 memmap for sources too large to hold in memory (PCam train).

    Fill it chunk by chunk inside the ``with``; ``images.npy`` appears only when
    the block finishes without error.
    """
    folder = Path(folder)
    with atomic_path(folder / "images.npy") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        yield array
        array.flush()
        del array


def write_samples(samples: pd.DataFrame, n_images: int, folder: str | Path) -> None:
    validate_samples(samples, n_images, str(folder))
    write_csv(samples[SAMPLE_COLUMNS], Path(folder) / "samples.csv")


def read_samples(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"caption": str, "group": str, "label_name": str})


def load_dataset(folder: str | Path) -> Dataset:
    folder = Path(folder)
    images = np.load(folder / "images.npy", mmap_mode="r")
    samples = read_samples(folder / "samples.csv")
    validate_samples(samples, len(images), str(folder))
    return Dataset(images=images, samples=samples)
