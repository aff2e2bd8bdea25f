"""Resumable, verified HTTP(S) downloads and streaming gunzip.

:func:`download` writes into ``<dest>.part``; when a transfer is cut, the next
call (or the next of ``retries`` attempts) asks the server for the rest with an
HTTP ``Range`` header and starts over when the server ignores it. The MD5 is
computed while streaming (the existing part is hashed first), and ``dest``
appears, by rename, only when the file is complete and verified. Every failure
is one :class:`DownloadError` line naming the file and the URL.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from medtune.data.store import DatasetError
from medtune.io import atomic_path

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
USER_AGENT = "medtune-download/1"


class DownloadError(DatasetError):
    """A download or decompression failed; the message names the file and URL."""


class _Truncated(Exception):
    """The connection ended before the announced length (resumable)."""


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
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest``; skip when ``dest`` exists (with the right MD5 if given).

    A cut connection is resumed up to ``retries`` times within this call, and
    the ``.part`` file is kept so that a later call resumes too.
    """
    dest = Path(dest)
    if dest.exists():
        if md5 is None or file_md5(dest, chunk_size) == md5.lower():
            return dest
        log.warning("%s exists with a wrong MD5; downloading it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            digest = _fetch_to_part(url, dest, chunk_size, timeout)
            break
        except _Truncated as exc:
            if attempt == retries:
                raise DownloadError(f"{dest}: transfer from {url} truncated ({exc}); rerun to resume") from None
            log.warning("%s: %s; resuming (attempt %d of %d)", dest.name, exc, attempt + 2, retries + 1)
    return _finish(url, dest, md5, digest.hexdigest())


def _fetch_to_part(url: str, dest: Path, chunk_size: int, timeout: float):
    """Complete ``dest.part`` (resuming when possible); return the MD5 digest of the whole part."""
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return _after_416(url, dest, exc, offset, chunk_size, timeout)
        raise DownloadError(f"{dest}: HTTP {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{dest}: cannot reach {url}: {reason}") from None
    with response:
        offset = _resume_offset(response, offset)
        expected = _expected_total(response, offset)
        return _stream(response, part, offset, expected, chunk_size, dest.name)


def _after_416(url: str, dest: Path, exc: urllib.error.HTTPError, offset: int, chunk_size: int, timeout: float):
    """Range not satisfiable: the part is complete when the server's size equals it, else restart."""
    part = part_path(dest)
    match = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
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
    """Append the body to ``part`` from ``offset``; return the MD5 digest of the whole part."""
    digest = _hash_file(part, chunk_size) if offset else hashlib.md5()
    written = offset
    with (
        open(part, "r+b" if offset else "wb") as fh,
        tqdm(total=expected, initial=offset, unit="B", unit_scale=True, desc=label, disable=None) as bar,
    ):
        fh.seek(offset)
        while block := _read_block(response, chunk_size, written):
            fh.write(block)
            digest.update(block)
            written += len(block)
            bar.update(len(block))
    if expected is not None and written < expected:
        raise _Truncated(f"got {written} of {expected} bytes")
    return digest


def _read_block(response, chunk_size: int, written: int) -> bytes:
    try:
        return response.read(chunk_size)
    except (OSError, http.client.HTTPException) as exc:
        raise _Truncated(f"connection lost after {written} bytes: {exc}") from None


def _finish(url: str, dest: Path, md5: str | None, got: str) -> Path:
    part = part_path(dest)
    if md5 is not None and got != md5.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{dest}: MD5 mismatch for {url}: expected {md5.lower()}, got {got}; "
            "deleted the partial file, rerun to download again"
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
