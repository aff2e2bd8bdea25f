"""PubMedVision (seed 001): a seeded sample of image–caption pairs labelled by body part.

The Hugging Face dataset ``FreedomIntelligence/PubMedVision`` holds
``PubMedVision_Alignment_VQA.json`` (647,031 records: ``id``, ``image`` — a list of
relative paths —, ``conversations`` of human/gpt turns, ``modality``, ``body_part``)
and the images in ``images_0.zip`` … ``images_19.zip`` (~2.86 GB each).

:func:`prepare_pubmedvision`, with ``folder`` the dataset's ``path``:

1. uses ``folder/PubMedVision_Alignment_VQA.json`` when it is there, else downloads
   it there (resumable, :func:`~medtune.data.download.download`);
2. samples ``n`` pairs with :func:`~medtune.data.pubmedvision_records.sample_records`:
   single-image records with a non-empty ``body_part`` and a gpt caption, in a seeded
   permutation; a record whose image is in none of the zips (e.g. ``pmc_9_0.jpg``) is
   skipped and counted, and the next record of the permutation takes its place. The
   skipped counts go to the log;
3. finds each sampled image in the zips (:class:`~medtune.data.pubmedvision_zips.ImageZips`),
   opening them one at a time as the sample needs them: zips placed in ``folder``
   first, then the others read in place over HTTP Range requests — ``zipfile`` reads
   the central directory at the end of the file, then, per image, the member's local
   header and compressed data: for 4,096 images roughly the central directories plus
   the images themselves (well under 1 GB) instead of ~57 GB — or, with
   ``full_download``, downloaded whole into ``folder``. ``zips`` limits the draw to
   the zips listed (e.g. the ones placed, to run offline);
4. leaves out the body parts with fewer than :data:`MIN_PAIRS_PER_PART` sampled pairs (a
   long tail of the 31 regions can land one or two pairs in a sample): the 70/10/20 %
   draw cannot give them a train and a test image, and such a class would score zero
   recall beside a perfect accuracy. Each is named in the log with its count;
5. writes the canonical store with :func:`~medtune.data.convert.write_image_dataset`:
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
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from medtune.data.convert import DEFAULT_SIZE, stratified_splits, write_image_dataset
from medtune.data.download import download
from medtune.data.http import DownloadError
from medtune.data.jsonstream import iter_records
from medtune.data.pubmedvision_records import DEFAULT_N, Pair, Sample, sample_records
from medtune.data.pubmedvision_zips import ImageZips
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

REPO_ID = "FreedomIntelligence/PubMedVision"
JSON_NAME = "PubMedVision_Alignment_VQA.json"
ZIP_NAMES = tuple(f"images_{i}.zip" for i in range(20))
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# the smallest class the 70/10/20 % draw gives a train and a test image (2 train, 1 test)
MIN_PAIRS_PER_PART = 3


def prepare_source(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    """The registered prepare function (:mod:`medtune.data.sources`); ``path`` holds the placed or fetched files."""
    from medtune.data.sources import dataset_path, size_and_seed

    prepare_pubmedvision(
        out_dir,
        dataset_path(spec),
        n=spec.get("n_samples", DEFAULT_N),
        base_url=spec.get("url"),
        full_download=spec.get("full_download", False),
        zips=spec.get("zips"),
        config_key=f"datasets.{name}",
        **size_and_seed(spec),
    )


def file_url(filename: str, base_url: str | None = None, revision: str | None = None) -> str:
    """The download URL of a file of the dataset repo (``base_url`` replaces the Hub endpoint)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(REPO_ID, filename, repo_type="dataset", revision=revision, endpoint=base_url)


def fetch_json(folder: str | os.PathLike, base_url: str | None = None, revision: str | None = None) -> Path:
    """``folder``'s Alignment VQA JSON: the placed one, or downloaded there."""
    path = Path(folder) / JSON_NAME
    if path.is_file():
        return path
    try:
        return download(file_url(JSON_NAME, base_url, revision), path)
    except DownloadError as exc:
        raise DownloadError(f"PubMedVision: {JSON_NAME} is not in {folder}/ and cannot be downloaded ({exc}); "
                            "place it there") from None


def prepare_pubmedvision(
    out_folder: str | os.PathLike,
    folder: str | os.PathLike,
    n: int = DEFAULT_N,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    base_url: str | None = None,
    full_download: bool = False,
    zips: Sequence[str] | None = None,
    *,
    revision: str | None = None,
    config_key: str = "the dataset",
) -> Sample:
    """Sample ``n`` PubMedVision pairs and write them to the canonical store at ``out_folder``.

    ``folder`` holds the placed files and receives the fetched ones (the JSON and, with
    ``full_download``, the zips). ``base_url`` replaces the Hugging Face endpoint
    (default: ``HF_ENDPOINT`` or huggingface.co); ``zips`` defaults to the 20
    ``images_*.zip``; ``config_key`` is where messages point for options. Returns the
    :class:`Sample`, whose ``skipped`` counts say what was left out.
    """
    zips = list(ZIP_NAMES if zips is None else zips)
    if not zips:
        raise DatasetError("PubMedVision: no image zips given")
    json_path = fetch_json(folder, base_url, revision)
    with contextlib.ExitStack() as stack:
        url_of = functools.partial(file_url, base_url=base_url, revision=revision)
        shelf = ImageZips(stack, zips, Path(folder), url_of, full_download=full_download, config_key=config_key)
        sample = sample_records(iter_records(json_path), n=n, seed=seed, available=shelf)
        sample.pairs = without_rare_parts(sample.pairs)
        class_names = sample.class_names
        label_of = {name: i for i, name in enumerate(class_names)}
        labels = [label_of[p.label] for p in sample.pairs]
        write_image_dataset(
            [shelf.image(p.basename) for p in sample.pairs],
            labels,
            stratified_splits(labels, SPLIT_FRACTIONS, seed),
            class_names,
            out_folder,
            size=size,
            captions=[p.caption for p in sample.pairs],
            groups=[p.label for p in sample.pairs],
            desc="PubMedVision",
        )
        shelf.report()
    return sample


def without_rare_parts(pairs: Sequence[Pair]) -> list[Pair]:
    """``pairs`` less those of body parts sampled fewer than :data:`MIN_PAIRS_PER_PART` times (logged)."""
    counts = Counter(p.label for p in pairs)
    rare = {part: k for part, k in sorted(counts.items()) if k < MIN_PAIRS_PER_PART}
    if rare:
        log.warning("PubMedVision: left out %d body part(s) with fewer than %d sampled pairs, too few for a train and "
                    "a test image (%s): %d of %d pairs kept", len(rare), MIN_PAIRS_PER_PART,
                    ", ".join(f"{part!r}: {k}" for part, k in rare.items()), len(pairs) - sum(rare.values()), len(pairs))
    return [p for p in pairs if p.label not in rare]
