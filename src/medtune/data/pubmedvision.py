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
import http.client
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from medtune.data.archives import read_zip_member
from medtune.data.convert import DEFAULT_SIZE, ImageRef, stratified_splits, write_image_dataset
from medtune.data.download import USER_AGENT, DownloadError, download
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

REPO_ID = "FreedomIntelligence/PubMedVision"
JSON_NAME = "PubMedVision_Alignment_VQA.json"
ZIP_NAMES = tuple(f"images_{i}.zip" for i in range(20))
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
DEFAULT_N = 4096

# Reasons a record is not sampled (keys of Sample.skipped).
SKIP_REASONS = ("malformed", "no_image", "multi_image", "no_body_part", "no_caption", "missing_image")


# --------------------------------------------------------------------------- sampling


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
    available: Iterable[str] | None = None,
) -> Sample:
    """A deterministic seeded sample of ``n`` single-image pairs labelled by body part.

    The eligible records are put in a seeded random order and taken from the front;
    with ``available`` (the image basenames that exist), a record whose image is not in
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
    present = None if available is None else set(available)
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


def iter_records(path: str | os.PathLike, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The records of a JSON array file (or of concatenated / JSON-Lines objects), streamed.

    The 0.7 GB JSON never sits in memory as a whole: records are decoded one by one
    from a sliding text buffer.
    """
    path = Path(path)
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    with open(path, encoding="utf-8") as fh:
        buf, pos, eof = "", 0, False

        def fill() -> bool:  # append a chunk; False at end of file
            nonlocal buf, pos, eof
            more = fh.read(chunk_chars)
            if not more:
                eof = True
                return False
            buf, pos = buf[pos:] + more, 0
            return True

        def skip_ws() -> str:  # the next non-blank character ("" at end of file)
            nonlocal pos
            while True:
                pos = ws.match(buf, pos).end()
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        def bad(what: str) -> DatasetError:
            return DatasetError(f"{path}: not a JSON list of records ({what})")

        first = skip_ws()
        in_array = first == "["
        if in_array:
            pos += 1
        elif first != "{":
            raise bad(f"starts with {first!r}" if first else "empty file")
        while True:
            char = skip_ws()
            if in_array and char == "]":
                return
            if not char:
                if in_array:
                    raise bad("truncated: no closing ']'")
                return
            if char != "{":
                raise bad(f"record starting with {char!r}")
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof or not fill():
                        raise bad(f"truncated or invalid record: {exc}") from None
            pos = end
            yield record
            if in_array:
                char = skip_ws()
                if char == ",":
                    pos += 1
                elif char != "]":
                    raise bad(f"expected ',' or ']' after a record, found {char!r}" if char else "truncated")


# --------------------------------------------------------------------------- remote zips


class HTTPRangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP: every read is a ``Range`` request.

    Opening fetches the last ``tail_size`` bytes (a suffix range, which also gives the
    file size), where ``zipfile`` looks for the end-of-central-directory record. A read
    that misses the buffer fetches at least ``block_size`` bytes, so a zip member's
    small header reads and its data usually cost one or two requests. The first
    response's URL (after redirects, e.g. to a CDN) is reused; when it stops working
    (an expired signed URL: 403/410), the original URL is resolved again. Transient
    failures are retried ``retries`` times. ``requests`` and ``bytes_fetched`` count
    the traffic.
    """

    def __init__(
        self,
        url: str,
        *,
        block_size: int = 64 << 10,
        tail_size: int = 1 << 20,
        timeout: float = 60.0,
        retries: int = 3,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self.url = url
        self.name = url
        self.block_size = max(1, block_size)
        self.timeout = timeout
        self.retries = retries
        self.headers = dict(headers or {})
        self.requests = 0
        self.bytes_fetched = 0
        self._resolved = url
        self._pos = 0
        self.size: int | None = None
        data, start, total = self._request(f"bytes=-{max(1, tail_size)}")
        self.size = total
        self._buf, self._buf_start = data, start

    # io plumbing
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts = []
        pos = self._pos
        while pos < end:
            buf_end = self._buf_start + len(self._buf)
            if self._buf_start <= pos < buf_end:  # served from the buffer
                stop = min(end, buf_end)
                parts.append(self._buf[pos - self._buf_start : stop - self._buf_start])
            elif pos < self._buf_start < end:  # the gap before the buffer; keep the buffer
                stop = self._buf_start
                parts.append(self._fetch(pos, stop))
            else:  # a miss: fetch with read-ahead, and buffer it
                fetch_stop = min(self.size, max(end, pos + self.block_size))
                self._buf, self._buf_start = self._fetch(pos, fetch_stop), pos
                stop = end
                parts.append(self._buf[: stop - pos])
            pos = stop
        self._pos = max(self._pos, end)
        return b"".join(parts)

    # HTTP
    def _fetch(self, start: int, stop: int) -> bytes:
        data, got_start, total = self._request(f"bytes={start}-{stop - 1}")
        if got_start != start or len(data) != stop - start:
            raise DownloadError(
                f"{self.url}: asked for bytes {start}-{stop - 1}, got {len(data)} bytes from {got_start}"
            )
        return data

    def _request(self, byte_range: str) -> tuple[bytes, int, int]:
        """(body, first byte, file size) of one ranged GET, with retries."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            url = self._resolved
            headers = {"User-Agent": USER_AGENT, **self.headers, "Range": byte_range}
            request = urllib.request.Request(url, headers=headers)
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if response.status != 206:
                        raise DownloadError(
                            f"{self.url}: the server ignored the Range request (HTTP {response.status}); "
                            "use full_download=True to fetch whole files"
                        )
                    start, stop, total = _content_range(response.headers.get("Content-Range", ""), self.url)
                    if self.size is not None and total != self.size:
                        raise DownloadError(f"{self.url}: file size changed from {self.size} to {total} while reading")
                    data = response.read()
                    self._resolved = response.geturl() or url
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 410) and url != self.url and not last:
                    self._resolved = self.url  # expired redirect target: resolve again
                    continue
                if exc.code in (408, 429) or exc.code >= 500:
                    if not last:
                        time.sleep(delay)
                        delay *= 2
                        continue
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {self.url} (Range {byte_range})") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if last:
                    reason = getattr(exc, "reason", exc)
                    raise DownloadError(f"cannot read {self.url} (Range {byte_range}): {reason}") from None
                time.sleep(delay)
                delay *= 2
                continue
            self.bytes_fetched += len(data)
            if len(data) == stop - start:
                return data, start, total
            if last:
                raise DownloadError(f"{self.url}: truncated response, {len(data)} of {stop - start} bytes")
        raise AssertionError("unreachable")


def _content_range(header: str, url: str) -> tuple[int, int, int]:
    """(start, stop, total) of ``bytes a-b/total`` (stop exclusive)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", header)
    if not match:
        raise DownloadError(f"{url}: bad or missing Content-Range {header!r} in a 206 response")
    start, last, total = (int(g) for g in match.groups())
    return start, last + 1, total


# --------------------------------------------------------------------------- the source


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
