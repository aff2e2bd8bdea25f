"""A read-only, seekable file over HTTP ``Range`` requests.

Lets :mod:`zipfile` read a few members of a multi-GB remote zip (its central
directory at the end, then each member's header and data) without downloading
the whole file. Requests and retries go through :mod:`medtune.data.http`.
"""

from __future__ import annotations

import io
import re
from typing import Mapping

from medtune.data import http
from medtune.data.http import DEFAULT_POLICY, DownloadError, RetryPolicy


class RangeNotSupported(DownloadError):
    """The server answers a Range request with the whole file; the caller says what to do instead."""


class HTTPRangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP: every read is a ``Range`` request.

    Opening fetches the last ``tail_size`` bytes (a suffix range, which also gives the
    file size), where ``zipfile`` looks for the end-of-central-directory record. A read
    that misses the buffer fetches at least ``block_size`` bytes, so a zip member's
    small header reads and its data usually cost one or two requests. The first
    response's URL (after redirects, e.g. to a CDN) is reused; when it stops working
    (an expired signed URL: 403/410), the original URL is resolved again. Transient
    failures are retried by the shared policy (:mod:`medtune.data.http`).
    ``requests`` and ``bytes_fetched`` count the traffic.
    """

    def __init__(
        self,
        url: str,
        *,
        block_size: int = 64 << 10,
        tail_size: int = 1 << 20,
        timeout: float = DEFAULT_POLICY.timeout,
        retries: int = DEFAULT_POLICY.retries,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self.url = url
        self.name = url
        self.block_size = max(1, block_size)
        self.policy = RetryPolicy(retries=retries, timeout=timeout)
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
        """(body, first byte, file size) of one ranged GET, retried by the shared policy."""
        try:
            return http.retry(lambda: self._attempt(byte_range), self.policy, self.url)
        except http.Transient as exc:
            raise DownloadError(f"cannot read {self.url} (Range {byte_range}): {exc}") from None

    def _attempt(self, byte_range: str) -> tuple[bytes, int, int]:
        url = self._resolved
        self.requests += 1
        try:
            response = http.get(url, byte_range=byte_range, headers=self.headers, timeout=self.policy.timeout)
        except http.HTTPStatusError as exc:
            if exc.code in (403, 410) and url != self.url:  # an expired redirect target: resolve again
                self._resolved = self.url
                raise http.Transient(f"{exc} from the redirect target", progress=True) from None
            raise DownloadError(f"{exc} for {self.url} (Range {byte_range})") from None
        with response:
            if response.status != 206:
                raise RangeNotSupported(f"{self.url}: the server ignored the Range request (HTTP {response.status})")
            start, stop, total = _content_range(response.headers.get("Content-Range", ""), self.url)
            if self.size is not None and total != self.size:
                raise DownloadError(f"{self.url}: file size changed from {self.size} to {total} while reading")
            data = http.read(response)
            self._resolved = response.geturl() or url
        self.bytes_fetched += len(data)
        if len(data) != stop - start:
            raise http.Transient(f"truncated response, {len(data)} of {stop - start} bytes")
        return data, start, total


def _content_range(header: str, url: str) -> tuple[int, int, int]:
    """(start, stop, total) of ``bytes a-b/total`` (stop exclusive)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", header)
    if not match:
        raise DownloadError(f"{url}: bad or missing Content-Range {header!r} in a 206 response")
    start, last, total = (int(g) for g in match.groups())
    return start, last + 1, total
