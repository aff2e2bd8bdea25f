"""PubMedVision (seed 001): a seeded sample of image–caption pairs labelled by body part.

The Hugging Face dataset ``FreedomIntelligence/PubMedVision`` holds
``PubMedVision_Alignment_VQA.json`` (647,031 records: ``id``, ``image`` — a list of
relative paths —, ``conversations`` of human/gpt turns, ``modality``, ``body_part``)
and the images in ``images_0.zip`` … ``images_19.zip`` (~2.86 GB each).

:func:`prepare_pubmedvision`

1. downloads the JSON (resumable, :func:`~medtune.data.download.download`) into
   ``cache_dir``;
2. opens every zip and indexes its members by basename. By default a zip is read in
   place over HTTP Range requests (:class:`HTTPRangeFile`): ``zipfile`` reads the
   central directory at the end of the file, then, per image, the member's local
   header and compressed data — for 4,096 images, roughly the 20 central directories
   plus the images themselves (well under 1 GB) instead of ~57 GB. With
   ``full_download=True`` the zips are downloaded whole into ``cache_dir`` instead;
3. samples ``n`` pairs with :func:`sample_records`: single-image records with a
   non-empty ``body_part`` and a gpt caption, in a seeded permutation; a record whose
   image is in none of the zips (e.g. ``pmc_9_0.jpg``) is skipped and counted, and the
   next record of the permutation takes its place;
4. writes the canonical store with :func:`~medtune.data.convert.write_image_dataset`:
   ``caption`` = the gpt turn, ``label_name`` = ``group`` = the body part, class names =
   the sorted body parts present in the sample, and splits train/val/test = 70/10/20 %
   stratified by body part with the same seed (the paper only says "Train & Validation /
   Test"; the 10 % validation split is ours, for model selection).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from medtune.data.archives import read_zip_member
from medtune.data.convert import DEFAULT_SIZE, ImageRef, stratified_splits, write_image_dataset
from medtune.data.download import download
from medtune.data.jsonstream import iter_records
from medtune.data.pubmedvision_records import DEFAULT_N, Sample, sample_records
from medtune.data.rangefile import HTTPRangeFile
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

REPO_ID = "FreedomIntelligence/PubMedVision"
JSON_NAME = "PubMedVision_Alignment_VQA.json"
ZIP_NAMES = tuple(f"images_{i}.zip" for i in range(20))
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def prepare_source(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function (:mod:`medtune.data.sources`); ``path`` holds the JSON."""
    from medtune.data.sources import dataset_path, size_and_seed

    prepare_pubmedvision(out_dir, dataset_path(spec), n=spec.get("n_samples", DEFAULT_N), base_url=spec.get("url"),
                         **size_and_seed(spec))


def file_url(filename: str, base_url: str | None = None, revision: str | None = None) -> str:
    """The download URL of a file of the dataset repo (``base_url`` replaces the Hub endpoint)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(REPO_ID, filename, repo_type="dataset", revision=revision, endpoint=base_url)


def fetch_json(cache_dir: str | os.PathLike, base_url: str | None = None, revision: str | None = None) -> Path:
    """Download the Alignment VQA JSON into ``cache_dir`` (skipped when it is there)."""
    return download(file_url(JSON_NAME, base_url, revision), Path(cache_dir) / JSON_NAME)


def open_zips(
    stack: contextlib.ExitStack,
    zips: Sequence[str],
    cache_dir: str | os.PathLike,
    base_url: str | None = None,
    full_download: bool = False,
    revision: str | None = None,
) -> dict[str, zipfile.ZipFile]:
    """One open ``ZipFile`` per zip name (closed with ``stack``): remote, or downloaded whole."""
    opened = {}
    for name in zips:
        url = file_url(name, base_url, revision)
        try:
            if full_download:
                source = download(url, Path(cache_dir) / "zips" / name)
            else:
                source = stack.enter_context(HTTPRangeFile(url))
            opened[name] = stack.enter_context(zipfile.ZipFile(source))
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{name} ({url}): not a readable zip archive ({exc})") from None
    return opened


def zip_index(opened: Mapping[str, zipfile.ZipFile]) -> dict[str, tuple[str, str]]:
    """Member basename -> (zip name, member name); the first zip wins for a repeated basename."""
    index: dict[str, tuple[str, str]] = {}
    repeated = 0
    for zip_name, zf in opened.items():
        for info in zf.infolist():
            if info.is_dir():
                continue
            base = PurePosixPath(info.filename).name
            if base in index:
                repeated += 1
            else:
                index[base] = (zip_name, info.filename)
    if repeated:
        log.warning("PubMedVision: %d image names occur in more than one zip; using the first", repeated)
    return index


def prepare_pubmedvision(
    out_folder: str | os.PathLike,
    cache_dir: str | os.PathLike,
    n: int = DEFAULT_N,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    base_url: str | None = None,
    full_download: bool = False,
    zips: Sequence[str] | None = None,
    *,
    revision: str | None = None,
) -> Sample:
    """Sample ``n`` PubMedVision pairs and write them to the canonical store at ``out_folder``.

    ``cache_dir`` keeps the JSON (and, with ``full_download``, the zips). ``base_url``
    replaces the Hugging Face endpoint (default: ``HF_ENDPOINT`` or huggingface.co);
    ``zips`` defaults to the 20 ``images_*.zip``. Returns the :class:`Sample`, whose
    ``skipped`` counts say what was left out.
    """
    zips = list(ZIP_NAMES if zips is None else zips)
    if not zips:
        raise DatasetError("PubMedVision: no image zips given")
    json_path = fetch_json(cache_dir, base_url, revision)
    with contextlib.ExitStack() as stack:
        opened = open_zips(stack, zips, cache_dir, base_url, full_download, revision)
        index = zip_index(opened)
        sample = sample_records(iter_records(json_path), n=n, seed=seed, available=index)
        class_names = sample.class_names
        label_of = {name: i for i, name in enumerate(class_names)}
        labels = [label_of[p.label] for p in sample.pairs]
        images = []
        for pair in sample.pairs:
            zip_name, member = index[pair.basename]
            read = functools.partial(read_zip_member, opened[zip_name], member)
            images.append(ImageRef(f"{zip_name}:{member}", read))
        write_image_dataset(
            images,
            labels,
            stratified_splits(labels, SPLIT_FRACTIONS, seed),
            class_names,
            out_folder,
            size=size,
            captions=[p.caption for p in sample.pairs],
            groups=[p.label for p in sample.pairs],
            desc="PubMedVision",
        )
        remote = [zf.fp for zf in opened.values() if isinstance(getattr(zf, "fp", None), HTTPRangeFile)]
        if remote:
            log.info(
                "PubMedVision: %d range requests, %.1f MB fetched from %d zips",
                sum(f.requests for f in remote),
                sum(f.bytes_fetched for f in remote) / 1e6,
                len(remote),
            )
    return sample
