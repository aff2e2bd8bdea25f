"""PubMedVision records to image–caption pairs, and the seeded sample of them.

A record gives a pair when it has exactly one image, a non-empty ``body_part``
(the label) and a gpt turn (the caption); :func:`sample_records` draws ``n`` of
those pairs in a seeded order, skipping (and counting) records whose image is
in none of the zips.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Container, Iterable, Mapping

import numpy as np

from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

DEFAULT_N = 4096
# Reasons a record is not sampled (keys of Sample.skipped).
SKIP_REASONS = ("malformed", "no_image", "multi_image", "no_body_part", "no_caption", "missing_image")


@dataclass(frozen=True)
class Pair:
    """One sampled image–text pair."""

    position: int  # index of the record in the JSON
    id: str
    image: str  # the record's relative path, e.g. images/pmc_123_0.jpg
    caption: str  # the gpt turn
    label: str  # the body part

    @property
    def basename(self) -> str:
        return PurePosixPath(self.image).name


@dataclass
class Sample:
    """The sampled pairs (in JSON order) and how many records were left out, by reason."""

    pairs: list[Pair]
    records: int  # records read
    eligible: int  # single-image records with a body part and a caption
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return sorted({p.label for p in self.pairs})


def record_pair(position: int, record: Any) -> Pair | str:
    """The pair a record gives, or the reason (a key of :data:`SKIP_REASONS`) it gives none."""
    if not isinstance(record, Mapping):
        return "malformed"
    images = record.get("image")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        return "no_image"
    if len(images) > 1:
        return "multi_image"
    image = images[0]
    if not isinstance(image, str) or not image.strip():
        return "no_image"
    body_part = record.get("body_part")
    if not isinstance(body_part, str) or not body_part.strip():
        return "no_body_part"
    caption = gpt_caption(record.get("conversations"))
    if not caption:
        return "no_caption"
    return Pair(position, str(record.get("id", position)), image.strip(), caption, body_part.strip())


def gpt_caption(conversations: Any) -> str:
    """The text of the first non-empty gpt turn ("" when there is none)."""
    if not isinstance(conversations, (list, tuple)):
        return ""
    for turn in conversations:
        if isinstance(turn, Mapping) and turn.get("from") == "gpt" and isinstance(turn.get("value"), str):
            text = turn["value"].strip()
            if text:
                return text
    return ""


def sample_records(
    records: Iterable[Any],
    n: int = DEFAULT_N,
    seed: int = 0,
    available: Container[str] | None = None,
) -> Sample:
    """A deterministic seeded sample of ``n`` single-image pairs labelled by body part.

    The eligible records are put in a seeded random order and taken from the front;
    with ``available`` (what answers ``basename in available``: a set of the image
    names that exist, or the lazily opened zips), a record whose image is not in
    it is counted as ``missing_image`` and the next one takes its place, so the sample
    is the same whenever its images exist and has ``n`` pairs whenever ``n`` can be had.
    Fewer than ``n`` stops with a :class:`DatasetError` saying how many were missing.
    The pairs come back in JSON order.
    """
    if n < 1:
        raise DatasetError(f"PubMedVision: sample size must be positive, got {n}")
    skipped = Counter({reason: 0 for reason in SKIP_REASONS})
    eligible: list[Pair] = []
    total = 0
    for position, record in enumerate(records):
        total += 1
        pair = record_pair(position, record)
        if isinstance(pair, str):
            skipped[pair] += 1
        else:
            eligible.append(pair)
    order = np.random.default_rng(seed).permutation(len(eligible))
    present = set(available) if isinstance(available, (list, tuple)) else available
    chosen: list[Pair] = []
    for i in order:
        pair = eligible[i]
        if present is not None and pair.basename not in present:
            skipped["missing_image"] += 1
            continue
        chosen.append(pair)
        if len(chosen) == n:
            break
    sample = Sample(sorted(chosen, key=lambda p: p.position), total, len(eligible), dict(skipped))
    if len(chosen) < n:
        raise DatasetError(
            f"PubMedVision: only {len(chosen)} of the {n} requested pairs can be sampled: {total} records, "
            f"{len(eligible)} eligible, {skipped['missing_image']} of those with an image missing from every zip "
            f"(skipped: {_counts(skipped)})"
        )
    log.info("PubMedVision: sampled %d of %d eligible records (%d read); skipped %s", n, len(eligible), total,
             _counts(skipped))
    return sample


def _counts(skipped: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in skipped.items() if v) or "none"
