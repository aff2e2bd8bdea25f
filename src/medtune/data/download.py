"""Resumable, verified HTTP(S) downloads and streaming gunzip.

:func:`download` writes into ``<dest>.part``; when a transfer is cut, the next
attempt (or the next call) asks the server for the rest with an HTTP ``Range``
header and starts over when the server ignores it. Attempts, timeouts and
back-off follow the shared policy of :mod:`medtune.data.http`. The MD5 is
computed while streaming (the existing part is hashed first), and ``dest``
appears, by rename, only when the file is complete and verified. Every failure
is one :class:`DownloadError` line naming the file and the URL.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import zlib
from pathlib import Path

from tqdm import tqdm

from medtune.data import http
from medtune.data.http import DEFAULT_POLICY, DownloadError, RetryPolicy  # noqa: F401  (DownloadError re-exported)
from medtune.io import atomic_path

CHUNK_SIZE = 1 << 20


class ChecksumError(DownloadError):
    """A complete download whose MD5 is not the expected one (its partial file deleted)."""

    def __init__(self, message: str, url: str, dest: Path, expected: str, found: str):
        super().__init__(message)
        self.url, self.dest, self.expected, self.found = url, dest, expected, found


def file_md5(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    return _hash_file(Path(path), chunk_size).hexdigest()


def _hash_file(path: Path, chunk_size: int):
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest


def part_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    *,
    retries: int = DEFAULT_POLICY.retries,
    timeout: float = DEFAULT_POLICY.timeout,
) -> Path:
    """Fetch ``url`` to ``dest``; skip when ``dest`` exists (with the right MD5 if given: else refuse).

    A cut connection is resumed up to ``retries`` times within this call, and
    the ``.part`` file is kept so that a later call resumes too.
    """
    dest = Path(dest)
    if dest.exists():  # only a verified download is renamed to dest: anything else there was placed by hand
        found = file_md5(dest, chunk_size) if md5 is not None else None
        if found is not None and found != md5.lower():
            raise DownloadError(
                f"{dest}: MD5 {found} differs from the expected {md5.lower()}; not downloading over a file "
                "placed there (move it away to download it again)"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    policy = RetryPolicy(retries=retries, timeout=timeout)
    try:
        digest = http.retry(lambda: _fetch_to_part(url, dest, chunk_size, policy.timeout), policy, dest.name)
    except http.Transient as exc:
        raise DownloadError(f"{dest}: transfer from {url} failed ({exc}); rerun to resume") from None
    return _finish(url, dest, md5, digest.hexdigest())


def _fetch_to_part(url: str, dest: Path, chunk_size: int, timeout: float):
    """Complete ``dest.part`` (resuming when possible); return the MD5 digest of the whole part."""
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = http.get(url, byte_range=f"bytes={offset}-" if offset else None, timeout=timeout)
    except http.HTTPStatusError as exc:
        if exc.code == 416 and offset:
            return _after_416(url, dest, exc, offset, chunk_size, timeout)
        raise DownloadError(f"{dest}: {exc} for {url}") from None
    with response:
        offset = _resume_offset(response, offset)
        expected = _expected_total(response, offset)
        return _stream(response, part, offset, expected, chunk_size, dest.name)


def _after_416(url: str, dest: Path, exc: http.HTTPStatusError, offset: int, chunk_size: int, timeout: float):
    """Range not satisfiable: the part is complete when the server's size equals it, else restart."""
    part = part_path(dest)
    match = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", ""))
    if match and int(match.group(1)) == offset:
        return _hash_file(part, chunk_size)
    part.unlink()
    return _fetch_to_part(url, dest, chunk_size, timeout)


def _resume_offset(response, offset: int) -> int:
    """Where the body starts: ``offset`` for 206 with a matching Content-Range, else 0 (restart)."""
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
    return 0


def _expected_total(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


def _stream(response, part: Path, offset: int, expected: int | None, chunk_size: int, label: str):
    """Append the body to ``part`` from ``offset``; return the MD5 digest of the whole part.

    A cut body is :class:`~medtune.data.http.Transient`, with progress when it
    added bytes, so the next attempt resumes from the longer part at once.
    """
    digest = _hash_file(part, chunk_size) if offset else hashlib.md5()
    written = offset
    with (
        open(part, "r+b" if offset else "wb") as fh,
        tqdm(total=expected, initial=offset, unit="B", unit_scale=True, desc=label, disable=None) as bar,
    ):
        fh.seek(offset)
        while block := http.read(response, chunk_size, done=written - offset):
            fh.write(block)
            digest.update(block)
            written += len(block)
            bar.update(len(block))
    if expected is not None and written < expected:
        raise http.Transient(f"truncated: got {written} of {expected} bytes", progress=written > offset)
    return digest


def _finish(url: str, dest: Path, md5: str | None, got: str) -> Path:
    part = part_path(dest)
    if md5 is not None and got != md5.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest}: MD5 mismatch for {url}: expected {md5.lower()}, got {got}; deleted the download "
            "(a rerun downloads it again, which helps only if the transfer was corrupted)",
            url, dest, md5.lower(), got,
        )
    os.replace(part, dest)
    return dest


def gunzip(src: str | os.PathLike, dest: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> Path:
    """Decompress ``src`` to ``dest`` while streaming; ``dest`` appears only when complete."""
    src, dest = Path(src), Path(dest)
    try:
        with gzip.open(src, "rb") as fin, atomic_path(dest) as tmp, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, chunk_size)
    except FileNotFoundError:
        raise DownloadError(f"{src}: no such file to decompress") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DownloadError(f"{src}: truncated or corrupt gzip file ({exc}); delete it and download again") from None
    except OSError as exc:
        raise DownloadError(f"cannot decompress {src} to {dest}: {exc}") from None
    return dest
