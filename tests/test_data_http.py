"""The shared HTTP policy: the downloader and the range reader retry the same failures the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import serve_locally

from medtune.data import http
from medtune.data.download import download
from medtune.data.http import DownloadError
from medtune.data.rangefile import HTTPRangeFile

BODY = bytes(range(256)) * 40


@dataclass
class Flaky:
    failures: int = 0  # the next N requests answer `status`
    status: int = 503
    requests: list = field(default_factory=list)


def make_handler(state: Flaky):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append(rng)
            if state.failures > 0:
                state.failures -= 1
                self.send_error(state.status)
                return
            start, stop = 0, len(BODY)
            if rng:
                first, last = rng[len("bytes=") :].split("-")
                if first == "":  # the last N bytes
                    start = len(BODY) - int(last)
                else:
                    start, stop = int(first), min(len(BODY), int(last) + 1) if last else len(BODY)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(BODY)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(stop - start))
            self.end_headers()
            self.wfile.write(BODY[start:stop])

    return Handler


@pytest.fixture
def flaky():
    state = Flaky()
    with serve_locally(make_handler(state)) as base:
        state.base = base
        yield state


@pytest.fixture
def sleeps(monkeypatch):
    """The back-off waits, recorded instead of slept."""
    waits = []
    monkeypatch.setattr(http.time, "sleep", waits.append)
    return waits


def test_download_retries_a_503_with_backoff(flaky, sleeps, tmp_path):
    flaky.failures = 2
    assert download(f"{flaky.base}/f", tmp_path / "f").read_bytes() == BODY
    assert sleeps == [0.5, 1.0] and len(flaky.requests) == 3


def test_range_reader_retries_a_503_the_same_way(flaky, sleeps):
    flaky.failures = 2
    with HTTPRangeFile(f"{flaky.base}/f", tail_size=100) as fh:
        fh.seek(10)
        assert fh.read(20) == BODY[10:30]
    assert sleeps == [0.5, 1.0]


def test_both_give_up_after_the_policy_retries_naming_the_url(flaky, sleeps, tmp_path):
    flaky.failures = 10
    with pytest.raises(DownloadError, match=r"f: transfer from .*/f failed \(HTTP 503 .*\); rerun to resume"):
        download(f"{flaky.base}/f", tmp_path / "f", retries=2)
    assert sleeps == [0.5, 1.0] and len(flaky.requests) == 3
    sleeps.clear()
    with pytest.raises(DownloadError, match=r"cannot read .*/g \(Range bytes=-100\): HTTP 503"):
        HTTPRangeFile(f"{flaky.base}/g", tail_size=100, retries=2)
    assert sleeps == [0.5, 1.0]
    assert not (tmp_path / "f").exists()


def test_a_client_error_is_final_at_once(flaky, sleeps, tmp_path):
    flaky.failures, flaky.status = 10, 404
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download(f"{flaky.base}/f", tmp_path / "f")
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        HTTPRangeFile(f"{flaky.base}/f")
    assert sleeps == [] and len(flaky.requests) == 2


def test_unreachable_host_is_retried_then_named(sleeps, tmp_path):
    with serve_locally(make_handler(Flaky())) as base:
        pass  # the port is closed now
    with pytest.raises(DownloadError, match=r"cannot reach http://127\.0\.0\.1:\d+/f"):
        download(f"{base}/f", tmp_path / "f", retries=1)
    assert sleeps == [0.5]
