"""The one HTTP layer under medtune's downloads and remote-file reads.

Every request goes through :func:`get` (one GET with medtune's User-Agent, an
optional ``Range`` header and the policy's timeout) and every retry through
:func:`retry`, so the file downloader (:mod:`medtune.data.download`) and the
range reader (:mod:`medtune.data.rangefile`) share one :class:`RetryPolicy`:

* transient failures — a refused or dropped connection, a timeout, HTTP 408, 429
  or 5xx, a body cut short — are retried up to ``retries`` times;
* a retry after an attempt that made progress (a download that got more bytes
  before the cut, an expired redirect target dropped) starts at once; any other
  waits ``backoff`` seconds, doubling each time;
* every other HTTP status is final at once (:class:`HTTPStatusError`).

Callers turn the last failure into one :class:`DownloadError` line naming the
file and the URL.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

from medtune.data.store import DatasetError

log = logging.getLogger(__name__)

USER_AGENT = "medtune-download/1"
T = TypeVar("T")


class DownloadError(DatasetError):
    """A download or remote read failed; the message names the file and URL."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # attempts after the first
    timeout: float = 60.0  # seconds per connect / per read
    backoff: float = 0.5  # seconds before the first retry that follows no progress; doubles


DEFAULT_POLICY = RetryPolicy()


class Transient(Exception):
    """A failure worth another attempt; ``progress`` says the attempt got somewhere first."""

    def __init__(self, reason: str, progress: bool = False):
        super().__init__(reason)
        self.progress = progress


class HTTPStatusError(Exception):
    """A final HTTP error status (4xx other than 408/429); the caller decides what it means."""

    def __init__(self, code: int, reason: str, headers: Mapping[str, str] | None):
        super().__init__(f"HTTP {code} {reason}")
        self.code, self.reason, self.headers = code, reason, headers or {}


def is_transient_status(code: int) -> bool:
    return code in (408, 429) or code >= 500


def get(url: str, *, byte_range: str | None = None, headers: Mapping[str, str] | None = None, timeout: float):
    """One GET; the open response, :class:`Transient` or :class:`HTTPStatusError`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if byte_range:
        request.add_header("Range", byte_range)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if is_transient_status(exc.code):
            raise Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise HTTPStatusError(exc.code, exc.reason, exc.headers) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise Transient(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def read(response, size: int = -1, *, done: int = 0) -> bytes:
    """``response.read(size)``; a dropped connection is :class:`Transient` (progress when ``done`` > 0)."""
    try:
        return response.read(size)
    except (OSError, http.client.HTTPException) as exc:
        raise Transient(f"connection lost after {done} bytes: {exc}", progress=done > 0) from None


def retry(attempt: Callable[[], T], policy: RetryPolicy, label: str) -> T:
    """``attempt()`` until it returns; :class:`Transient` failures are retried by ``policy``.

    The last failure is re-raised for the caller to turn into its own message.
    """
    delay = policy.backoff
    for n in range(policy.retries + 1):
        try:
            return attempt()
        except Transient as exc:
            if n == policy.retries:
                raise
            log.warning("%s: %s; retrying (attempt %d of %d)", label, exc, n + 2, policy.retries + 1)
            if exc.progress:
                delay = policy.backoff
            else:
                time.sleep(delay)
                delay *= 2
    raise AssertionError("unreachable")
