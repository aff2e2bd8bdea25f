"""Resumable, verified downloads against a local HTTP server; streaming gunzip; PCam fetch."""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import h5py
import numpy as np
import pytest

from conftest import serve_locally

from medtune.data import pcam
from medtune.data.download import DownloadError, download, gunzip, part_path
from medtune.data.store import DatasetError


@dataclass
class ServerConfig:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # bytes of body sent before the connection is cut
    cuts: int = 0  # how many responses are cut
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def make_handler(config: ServerConfig):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            path = urlsplit(self.path).path
            config.requests.append((path, self.headers.get("Range")))
            body = config.files.get(path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = self.range_start()
            if start is not None and start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if start is None:
                self.send_response(200)
                start = 0
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if config.cuts > 0 and config.cut_after is not None:
                config.cuts -= 1
                self.wfile.write(payload[: config.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

        def range_start(self) -> int | None:
            header = self.headers.get("Range")
            if not header or not config.honour_range:
                return None
            match = re.fullmatch(r"bytes=(\d+)-", header)
            return int(match.group(1)) if match else None

    return Handler


@pytest.fixture
def server():
    config = ServerConfig()
    with serve_locally(make_handler(config)) as base:
        config.base = base
        yield config


def payload(n: int = 50_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_and_leaves_no_part(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    dest = download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(data), chunk_size=4096)
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()


def test_existing_verified_file_is_skipped(server, tmp_path):
    data = payload()
    (tmp_path / "f.bin").write_bytes(data)
    download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(data))
    assert server.requests == []


def test_resume_after_cut_connection(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    server.cut_after, server.cuts = 12_345, 1
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"f\.bin.*truncated.*got 12345 of 50000 bytes") as err:
        download(f"{server.base}/f.bin", dest, md5=md5(data), chunk_size=1000, retries=0)
    assert f"{server.base}/f.bin" in str(err.value)
    assert not dest.exists() and part_path(dest).stat().st_size == 12_345
    download(f"{server.base}/f.bin", dest, md5=md5(data), chunk_size=1000, retries=0)
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("/f.bin", "bytes=12345-")


def test_retries_resume_within_one_call(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    server.cut_after, server.cuts = 7_000, 3
    dest = download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(data), chunk_size=1000, retries=3)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=7000-", "bytes=14000-", "bytes=21000-"]


def test_server_ignoring_range_restarts(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    server.honour_range = False
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"garbage" * 100)
    download(f"{server.base}/f.bin", dest, md5=md5(data))
    assert dest.read_bytes() == data


def test_complete_part_with_416_is_finished(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(data)
    download(f"{server.base}/f.bin", dest, md5=md5(data))
    assert dest.read_bytes() == data and not part_path(dest).exists()


def test_md5_mismatch_names_file_and_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = payload()
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download(f"{server.base}/f.bin", dest, md5="0" * 32)
    message = str(err.value)
    assert "f.bin" in message and "MD5 mismatch" in message and "0" * 32 in message
    assert md5(payload()) in message and f"{server.base}/f.bin" in message
    assert "\n" not in message
    assert not dest.exists() and not part_path(dest).exists()


def test_http_404_is_one_clear_error(server, tmp_path):
    dest = tmp_path / "missing.bin"
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404 .*/missing\.bin"):
        download(f"{server.base}/missing.bin", dest)
    assert not dest.exists()


def test_download_error_is_a_dataset_error():
    assert issubclass(DownloadError, DatasetError)


def test_gunzip_roundtrip_and_truncated(tmp_path):
    data = payload(200_000)
    gz = tmp_path / "a.h5.gz"
    gz.write_bytes(gzip.compress(data))
    assert gunzip(gz, tmp_path / "a.h5", chunk_size=4096).read_bytes() == data
    bad = tmp_path / "b.h5.gz"
    bad.write_bytes(gzip.compress(data)[:-5000])
    with pytest.raises(DownloadError, match=r"b\.h5\.gz: truncated or corrupt gzip"):
        gunzip(bad, tmp_path / "b.h5")
    assert not (tmp_path / "b.h5").exists()
    assert not list(tmp_path.glob(".b.h5*"))
    notgz = tmp_path / "c.h5.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(DownloadError, match=r"c\.h5\.gz"):
        gunzip(notgz, tmp_path / "c.h5")


def test_pcam_fetch_downloads_verifies_and_gunzips(server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    md5s = {}
    for part, array in (("x", np.zeros((4, 96, 96, 3), np.uint8)), ("y", np.ones((4, 1, 1, 1), np.uint8))):
        name = pcam.h5_name("valid", part)
        with h5py.File(src / name, "w") as fh:
            fh.create_dataset(part, data=array)
        blob = gzip.compress((src / name).read_bytes())
        server.files[f"/{name}.gz"] = blob
        md5s[f"{name}.gz"] = md5(blob)
    raw = tmp_path / "raw"
    paths = pcam.fetch(raw, base_url=server.base, splits=("valid",), md5s=md5s)
    assert [p.name for p in paths] == [pcam.h5_name("valid", "x"), pcam.h5_name("valid", "y")]
    assert all(p.read_bytes() == (src / p.name).read_bytes() for p in paths)
    n_requests = len(server.requests)
    pcam.fetch(raw, base_url=server.base, splits=("valid",), md5s=md5s)
    assert len(server.requests) == n_requests  # nothing fetched again


def test_pcam_constants_match_facts():
    assert pcam.MD5["camelyonpatch_level_2_split_valid_x.h5.gz"] == "d5b63470df7cfa627aeec8b9dc0c066e"
    assert pcam.MD5["camelyonpatch_level_2_split_test_x.h5.gz"] == "d8c2d60d490dbd479f8199bdfa0cf6ec"
    assert len(pcam.MD5) == 6
    assert pcam.file_url(pcam.ZENODO, "a.h5.gz") == "https://zenodo.org/records/2546921/files/a.h5.gz?download=1"
