"""The one code path from loose image files to the canonical store.

Every image-file source (MHIST, Osteosarcoma, WSSS4LUAD, an image folder, a CSV
manifest) lists its images, labels and splits, then calls
:func:`write_image_dataset`, which decodes, converts to RGB, resizes and writes
them with :func:`medtune.data.store.image_writer`. Images are scaled so the
shorter side is ``size`` and centre-cropped to a square (what CLIP's own
preprocessing does; a square image is simply resized). A file that cannot be read
stops the conversion with its path in the message; nothing is dropped silently.

The split helpers here are seeded and stratified by class, so the same files and
seed give the same splits on any machine.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from medtune.data.store import SPLITS, DatasetError, image_writer, write_samples

DEFAULT_SIZE = 224
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageRef:
    """An image that is not a plain file: ``read()`` returns its encoded bytes.

    ``name`` is what an error message shows, e.g. ``images.zip:images/a.png``.
    """

    name: str
    read: Callable[[], bytes]


ImageSource = Union[str, os.PathLike, ImageRef]


def source_name(source: ImageSource) -> str:
    return source.name if isinstance(source, ImageRef) else str(source)


def load_rgb(source: ImageSource, size: int) -> np.ndarray:
    """Decode one image, convert it to RGB, scale and centre-crop it to ``size`` x ``size`` (uint8)."""
    try:
        data = source.read() if isinstance(source, ImageRef) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {source_name(source)}: {exc}") from exc
    if rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def samples_table(
    labels: Sequence[int],
    splits: Sequence[str],
    class_names: Sequence[str],
    captions: Sequence[str] | None = None,
    groups: Sequence[str] | str = "",
) -> pd.DataFrame:
    n = len(labels)
    labels = np.asarray(labels, dtype=np.int64)
    if len(splits) != n or (captions is not None and len(captions) != n):
        raise DatasetError(f"{n} labels but {len(splits)} splits / {n if captions is None else len(captions)} captions")
    if not isinstance(groups, str) and len(groups) != n:
        raise DatasetError(f"{n} labels but {len(groups)} groups")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DatasetError(f"label outside 0..{len(class_names) - 1} for classes {list(class_names)}")
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "split": list(splits),
            "label": labels,
            "label_name": [class_names[i] for i in labels],
            "caption": [""] * n if captions is None else [str(c) for c in captions],
            "group": [groups] * n if isinstance(groups, str) else [str(g) for g in groups],
        }
    )


def write_image_dataset(
    images: Sequence[ImageSource],
    labels: Sequence[int],
    splits: Sequence[str],
    class_names: Sequence[str],
    folder: str | os.PathLike,
    *,
    size: int = DEFAULT_SIZE,
    captions: Sequence[str] | None = None,
    groups: Sequence[str] | str = "",
    desc: str = "images",
) -> Path:
    """Decode, resize and store ``images`` with their labels as a canonical dataset."""
    folder = Path(folder)
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if not images:
        raise DatasetError(f"{folder}: no images to convert")
    samples = samples_table(labels, splits, class_names, captions, groups)
    with image_writer(folder, (len(images), size, size, 3)) as out:
        for i, source in enumerate(tqdm(images, desc=desc, unit="img", disable=None)):
            out[i] = load_rgb(source, size)
    write_samples(samples, len(images), folder)
    return folder


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursively), sorted; hidden files and ``__MACOSX`` skipped."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if is_image_name(p.relative_to(root).as_posix()) and p.is_file())


def is_image_name(name: str) -> bool:
    """An image file name, not hidden, not under ``__MACOSX`` (the junk macOS adds to zips)."""
    parts = name.split("/")
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") or part == "__MACOSX" for part in parts
    )


def read_table(path: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV as stripped strings, checked for the required ``columns``."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table.apply(lambda col: col.str.strip())


def check_fractions(fractions: Mapping[str, float]) -> None:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise DatasetError(f"unknown split(s) {unknown} in split fractions; expected {list(SPLITS)}")
    if any(f < 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise DatasetError(f"split fractions {dict(fractions)} must be non-negative and sum to 1")


def stratified_splits(
    labels: Sequence, fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> np.ndarray:
    """A split name per sample: within each class, a seeded permutation cut by ``fractions``.

    Counts are rounded per class; the last split in ``fractions`` takes the remainder.
    """
    check_fractions(fractions)
    labels = pd.Series(np.asarray(labels))
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    for _, idx in sorted(labels.groupby(labels).indices.items()):
        perm = rng.permutation(idx)
        bounds = np.round(np.cumsum([fractions[s] for s in names]) * len(perm)).astype(int)
        bounds[-1] = len(perm)
        for name, part in zip(names, np.split(perm, bounds[:-1])):
            out[part] = name
    return out


def carve_validation(labels: Sequence, splits: Sequence[str], fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Move a seeded, class-stratified ``fraction`` of the train samples to ``val``."""
    if not 0 <= fraction < 1:
        raise DatasetError(f"validation fraction {fraction} outside [0, 1)")
    splits = np.asarray(splits, dtype=object).copy()
    train = np.flatnonzero(splits == "train")
    inner = stratified_splits(np.asarray(labels)[train], {"val": fraction, "train": 1 - fraction}, seed)
    splits[train] = inner
    return splits
