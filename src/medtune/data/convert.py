"""The one code path from loose image files to the canonical store.

Every image-file source (MHIST, Osteosarcoma, WSSS4LUAD, an image folder, a CSV
manifest) lists its images, labels and splits, then calls
:func:`write_image_dataset`, which decodes, converts to RGB, resizes and writes
them with :func:`medtune.data.store.image_writer`. Images are scaled so the
shorter side is ``size`` and centre-cropped to a square (what CLIP's own
preprocessing does; a square image is simply resized). A file that cannot be read
stops the conversion with its path in the message; nothing is dropped silently.

Only regular files of at most :data:`MAX_IMAGE_BYTES` are read (opened without
blocking, checked on the open descriptor), so a FIFO or a device such as
``/dev/zero`` named as an image stops with one line instead of hanging or filling
memory. Every mode Pillow opens keeps its intensities: 8-bit modes go through
Pillow's RGB conversion; the high-bit-depth grey modes, which that conversion
clips at 255, are scaled linearly to 0..255 by their range (:func:`to_uint8`).

The split helpers here are seeded and stratified by class, so the same files and
seed give the same splits on any machine.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from medtune.data.store import SPLITS, DatasetError, image_writer, write_samples
from medtune.io import write_csv

log = logging.getLogger(__name__)

DEFAULT_SIZE = 224
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
CARVED_VAL_FRACTION = 0.1  # of train, when the data bring train and test but no validation split
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MAX_IMAGE_BYTES = 1 << 30  # 1 GiB: above any image Pillow would decode (its bomb limit is 179 Mpixels)


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


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_regular_file(st: os.stat_result, name: str, limit: int = MAX_IMAGE_BYTES) -> None:
    """Refuse what is not a regular file of at most ``limit`` bytes, naming it."""
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{name} is {file_kind(st.st_mode)}, not an image file; only regular files are read")
    if st.st_size > limit:
        raise DatasetError(f"{name} has {st.st_size} bytes, more than the {limit} an image file may have")


def read_image_file(path: str | os.PathLike, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a FIFO is refused, not waited on)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        check_regular_file(os.fstat(fh.fileno()), str(path), limit)
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise DatasetError(f"{path} has more than the {limit} bytes an image file may have")
    return data


def load_rgb(source: ImageSource, size: int) -> np.ndarray:
    """Decode one image, convert it to RGB, scale and centre-crop it to ``size`` x ``size`` (uint8)."""
    try:
        data = source.read() if isinstance(source, ImageRef) else read_image_file(source)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = to_rgb(image)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {source_name(source)}: {exc}") from exc
    if rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB without clipping: high-bit-depth grey through :func:`to_uint8`, every other mode through Pillow."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(to_uint8(np.asarray(image), image.mode), "L").convert("RGB")
    if image.mode == "La":  # premultiplied; Pillow converts it only to LA
        image = image.convert("LA")
    return image.convert("RGB")


def to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of a high-bit-depth mode scaled linearly to 0..255 by the mode's range.

    ``I;16*``: 0..65535. ``I`` (32-bit integers; what 16-bit files often decode to):
    0..65535 when every value lies there, else the image's own minimum..maximum.
    ``F`` (floats): 0..1 when every value lies there, else the image's own
    minimum..maximum. Non-finite values are refused.
    """
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"mode {mode} image holds non-finite values")
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif mode == "I" and values.min() >= 0 and values.max() <= 65535:
        low, high = 0.0, 65535.0
    elif mode == "F" and values.min() >= 0 and values.max() <= 1:
        low, high = 0.0, 1.0
    else:
        low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def samples_table(
    labels: Sequence[int],
    splits: Sequence[str],
    class_names: Sequence[str],
    captions: Sequence[str] | None = None,
    groups: Sequence[str] | str = "",
    sites: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """The samples table; ``sites`` (one for all, or one per image) adds the optional ``site`` column."""
    n = len(labels)
    labels = np.asarray(labels, dtype=np.int64)
    if len(splits) != n or (captions is not None and len(captions) != n):
        raise DatasetError(f"{n} labels but {len(splits)} splits / {n if captions is None else len(captions)} captions")
    if not isinstance(groups, str) and len(groups) != n:
        raise DatasetError(f"{n} labels but {len(groups)} groups")
    if sites is not None and not isinstance(sites, str) and len(sites) != n:
        raise DatasetError(f"{n} labels but {len(sites)} sites")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DatasetError(f"label outside 0..{len(class_names) - 1} for classes {list(class_names)}")
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "split": list(splits),
            "label": labels,
            "label_name": [class_names[i] for i in labels],
            "caption": [""] * n if captions is None else [str(c) for c in captions],
            "group": [groups] * n if isinstance(groups, str) else [str(g) for g in groups],
        }
    )
    if sites is not None:
        table["site"] = [sites] * n if isinstance(sites, str) else [str(s) for s in sites]
    return table


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
    sites: Sequence[str] | str | None = None,
    desc: str = "images",
) -> Path:
    """Decode, resize and store ``images`` with their labels (and sites, when known) as a canonical dataset.

    Images identical after decoding and resizing (the same file placed twice, a slide exported
    twice) in different splits would put test images into training: every copy outside the
    most held-out split they share (test, then val, train, pretrain) is dropped, with a count in
    the log and each pair in :data:`DROPPED_DUPLICATES` beside the store. Copies within one
    split are kept.
    """
    folder = Path(folder)
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if not images:
        raise DatasetError(f"{folder}: no images to convert")
    samples = samples_table(labels, splits, class_names, captions, groups, sites)
    with image_writer(folder, (len(images), size, size, 3)) as out:
        digests = []
        for i, source in enumerate(tqdm(images, desc=desc, unit="img", disable=None)):
            out[i] = image = load_rgb(source, size)
            digests.append(hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        dropped = cross_split_duplicates(digests, samples, [source_name(s) for s in images])
        if len(dropped):
            out.keep_rows(np.flatnonzero(~samples["index"].isin(dropped["row"])))
    record_dropped(dropped, folder, desc)
    kept = samples[~samples["index"].isin(dropped["row"])].assign(index=lambda t: np.arange(len(t)))
    write_samples(kept.reset_index(drop=True), len(kept), folder)
    return folder


DROPPED_DUPLICATES = "dropped_duplicates.csv"
HELD_OUT_ORDER = ("test", "val", "train", "pretrain")  # the copy in the first split a group reaches is kept


def cross_split_duplicates(digests: Sequence[bytes], samples: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The rows to drop (``row``, ``file``, ``split``, ``label_name``) with the copy each repeats
    (``kept``, ``kept_split``, ``kept_label_name``): every image whose identical copy lies in a more
    held-out split."""
    table = pd.DataFrame({"digest": list(digests), "row": samples["index"].to_numpy(), "file": list(names),
                          "split": samples["split"].to_numpy(), "label_name": samples["label_name"].to_numpy()})
    table["rank"] = table["split"].map({s: k for k, s in enumerate(HELD_OUT_ORDER)})
    best = table.sort_values(["rank", "row"]).drop_duplicates("digest").set_index("digest")
    kept = best.loc[table["digest"]].reset_index(drop=True)
    mask = (table["rank"] > kept["rank"]).to_numpy()
    out = table.loc[mask, ["row", "file", "split", "label_name"]].reset_index(drop=True)
    return out.assign(kept=kept.loc[mask, "file"].to_numpy(), kept_split=kept.loc[mask, "split"].to_numpy(),
                      kept_label_name=kept.loc[mask, "label_name"].to_numpy())


def record_dropped(dropped: pd.DataFrame, folder: Path, desc: str) -> None:
    """Log the dropped copies and list them beside the store (a stale list removed when there are none)."""
    listing = folder / DROPPED_DUPLICATES
    if dropped.empty:
        listing.unlink(missing_ok=True)
        return
    relabelled = int((dropped["label_name"] != dropped["kept_label_name"]).sum())
    first = dropped.iloc[0]
    log.warning(
        "%s: dropped %d image(s) identical to one in a more held-out split (%s), %d of them with another label; "
        "e.g. %s (%s) = %s (%s); all listed in %s",
        desc, len(dropped), ", ".join(f"{k} from {s}" for s, k in dropped["split"].value_counts().sort_index().items()),
        relabelled, first["file"], first["split"], first["kept"], first["kept_split"], listing,
    )
    write_csv(dropped, listing)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursively), sorted; hidden files and ``__MACOSX`` skipped.

    An image name that is not a regular file (a FIFO, a device, a broken link) is
    listed too, so that reading it stops with its name instead of dropping it silently;
    so does a folder that cannot be read (``rglob`` would skip it, and its images, in
    silence). Links to folders below ``root`` are not followed.
    """
    found = []
    for folder, dirs, files in os.walk(root, onerror=_unreadable):  # strings: a Path per file costs seconds at 100k
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        found += [os.path.join(folder, f) for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return [Path(p) for p in sorted(found, key=lambda p: p.split(os.sep))]  # the order Paths sort in


def _unreadable(err: OSError) -> None:
    """``os.walk``'s error handler: a folder it may not read stops the listing; one that is not
    there (any more) holds nothing."""
    if not isinstance(err, FileNotFoundError):
        raise DatasetError(f"cannot read the folder {err.filename}: {err.strerror}") from None


def is_image_name(name: str) -> bool:
    """An image file name, not hidden, not under ``__MACOSX`` (the junk macOS adds to zips)."""
    parts = name.split("/")
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") or part == "__MACOSX" for part in parts
    )


def read_table(path: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV as stripped strings, checked for the required ``columns``.

    UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes; a file in
    another encoding, or one that separates columns with ``;`` or tabs (Excel in many
    locales), is refused saying so.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                           "save it as UTF-8 (Excel: CSV UTF-8)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]  # "path, label" as a spreadsheet writes it
    missing = [c for c in columns if c not in table.columns]
    if missing:
        separator = next((repr(sep) for sep in (";", "\t") if len(table.columns) == 1 and sep in table.columns[0]), None)
        hint = f" (the header is one column holding {separator}: separate columns with commas)" if separator else ""
        raise DatasetError(f"{path}: missing column(s) {missing}; found {list(table.columns)}{hint}")
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


def carve_missing_validation(labels: Sequence, splits: Sequence[str], seed: int, where: str) -> np.ndarray:
    """``splits`` with a seeded, stratified ``val`` carved from train when there is train but no val.

    Model selection needs a validation split; data laid out as train/test only get
    :data:`CARVED_VAL_FRACTION` of train, said so in the log. Too small a train to
    give any is an error naming ``where``.
    """
    splits = np.asarray(splits, dtype=object)
    train = int((splits == "train").sum())
    if not train or (splits == "val").any():
        return splits
    carved = carve_validation(labels, splits, CARVED_VAL_FRACTION, seed)
    n_val = int((carved == "val").sum())
    if not n_val:
        raise DatasetError(
            f"{where}: no validation split, and train ({train} images) is too small to carve "
            f"{CARVED_VAL_FRACTION:.0%} of it per class; add a val split"
        )
    log.info("%s: no validation split; carved a seeded, class-stratified %d of the %d train images as val",
             where, n_val, train)
    return carved
