"""PubMedVision against a local fake Hub: sampling, remote-zip Range reads, the store, fallbacks."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import serve_locally

from medtune.data import pubmedvision as pmv
from medtune.data.convert import stratified_splits
from medtune.data.http import DownloadError
from medtune.data.jsonstream import iter_records
from medtune.data.pubmedvision_records import sample_records
from medtune.data.rangefile import HTTPRangeFile, RangeNotSupported
from medtune.data.store import DatasetError, load_dataset

RESOLVE = f"/datasets/{pmv.REPO_ID}/resolve/main/"
PARTS = ("Brain", "Chest", "Abdomen")
N_GOOD = 30  # eligible single-image records whose image exists
FILLER = 60  # unneeded members per zip
FILLER_BYTES = 100_000


# --------------------------------------------------------------------------- fake Hub


@dataclass
class Hub:
    files: dict[str, bytes] = field(default_factory=dict)  # served under /cdn/<name>
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, body bytes)
    base: str = ""
    ignore_range: bool = False
    expire_cdn: int = 0  # the next N "CDN" requests answer 403, like an expired signed URL

    def zip_log(self):
        return [entry for entry in self.log if entry[0].endswith(".zip")]


def make_handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = urlsplit(self.path).path
            rng = self.headers.get("Range")
            if path.startswith(RESOLVE):  # like the Hub: redirect to a "CDN"
                hub.log.append((path, rng, 0))
                self.send_response(302)
                self.send_header("Location", "/cdn/" + path[len(RESOLVE) :])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path.startswith("/cdn/") and hub.expire_cdn > 0:
                hub.expire_cdn -= 1
                hub.log.append((path, rng, 0))
                self.send_error(403, "Forbidden")
                return
            body = hub.files.get(path[len("/cdn/") :]) if path.startswith("/cdn/") else None
            if body is None:
                hub.log.append((path, rng, 0))
                self.send_error(404, "Not Found")
                return
            span = None if hub.ignore_range else self.span(rng, len(body))
            if span == "bad":
                hub.log.append((path, rng, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if span is None:
                self.send_response(200)
                payload = body
            else:
                start, stop = span
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
                payload = body[start:stop]
            hub.log.append((path, rng, len(payload)))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                self.close_connection = True

        @staticmethod
        def span(header, size):
            if not header:
                return None
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", header)
            if not match or match.groups() == ("", ""):
                return "bad"
            first, last = match.groups()
            if first == "":  # suffix: the last N bytes
                return max(0, size - int(last)), size
            start = int(first)
            stop = size if last == "" else min(size, int(last) + 1)
            return "bad" if start >= size else (start, stop)

    return Handler


@pytest.fixture
def hub():
    state = Hub()
    with serve_locally(make_handler(state)) as base:
        state.base = base
        yield state


# --------------------------------------------------------------------------- fake data


def colour(i: int) -> tuple[int, int, int]:
    return (40 + 5 * i, 200 - 4 * i, (97 * i) % 256)


def image_bytes(i: int) -> bytes:
    fmt = "PNG" if i % 2 else "JPEG"
    out = io.BytesIO()
    Image.new("RGB", (48, 32), colour(i)).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def image_name(i: int) -> str:
    return f"pmc_{1000 + i}_0.{'png' if i % 2 else 'jpg'}"


def record(i, image, body_part="Brain", caption=None, human=True):
    conversations = [{"from": "human", "value": "<image>\nDescribe the image."}] if human else []
    if caption is not False:
        conversations.append({"from": "gpt", "value": caption or f"caption {i}: a {body_part} image."})
    return {"id": f"Alignment_VQA_{i}", "image": image, "conversations": conversations,
            "modality": "CT", "body_part": body_part}


def fake_records() -> list[dict]:
    """30 good records, 4 multi-image, 3 without a body part, 1 without a caption, 1 missing image."""
    records = [record(i, [f"images/{image_name(i)}"], PARTS[i % 3]) for i in range(N_GOOD)]
    records += [record(100 + k, [f"images/{image_name(k)}", f"images/{image_name(k + 1)}"]) for k in range(4)]
    records += [record(200, ["images/pmc_x_1.jpg"], ""), record(201, ["images/pmc_x_2.jpg"], "  ")]
    no_part = record(202, ["images/pmc_x_3.jpg"])
    del no_part["body_part"]
    records += [no_part, record(300, ["images/pmc_x_4.jpg"], caption=False)]
    records.append(record(400, ["images/pmc_9_0.jpg"], "Chest"))  # in no zip
    order = np.random.default_rng(7).permutation(len(records))
    return [records[k] for k in order]


def make_zip(members: dict[str, bytes], stored: bool) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def fake_zips() -> dict[str, bytes]:
    """Two zips: zip 0 keeps the images/ prefix and is deflated, zip 1 is flat and stored; lots of filler."""
    rng = np.random.default_rng(0)
    zips = {}
    for z in range(2):
        members = {}
        for i in range(z, N_GOOD, 2):
            members[("images/" if z == 0 else "") + image_name(i)] = image_bytes(i)
        for k in range(FILLER):
            members[f"images/pmc_filler_{z}_{k}.jpg"] = rng.integers(0, 256, FILLER_BYTES, dtype=np.uint8).tobytes()
        names = list(members)
        order = rng.permutation(len(names))  # needed images scattered among the filler
        zips[f"images_{z}.zip"] = make_zip({names[k]: members[names[k]] for k in order}, stored=z == 1)
    return zips


ZIPS = ["images_0.zip", "images_1.zip"]


@pytest.fixture(scope="module")
def data():
    return fake_records(), fake_zips()


@pytest.fixture
def served(hub, data):
    records, zips = data
    hub.files[pmv.JSON_NAME] = json.dumps(records).encode()
    hub.files.update(zips)
    return hub


def expected_by_id(records):
    return {r["id"]: r for r in records}


# --------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_and_counts_skips(data):
    records, _ = data
    a = sample_records(records, n=12, seed=3)
    b = sample_records(records, n=12, seed=3)
    assert a.pairs == b.pairs and len(a.pairs) == 12
    assert [p.position for p in a.pairs] == sorted(p.position for p in a.pairs)
    assert a.records == len(records) and a.eligible == N_GOOD + 1
    assert a.skipped["multi_image"] == 4
    assert a.skipped["no_body_part"] == 3
    assert a.skipped["no_caption"] == 1
    assert a.skipped["missing_image"] == 0
    assert sample_records(records, n=12, seed=4).pairs != a.pairs
    by_id = expected_by_id(records)
    for pair in a.pairs:
        rec = by_id[pair.id]
        assert pair.caption == rec["conversations"][1]["value"]
        assert pair.label == rec["body_part"] and pair.image == rec["image"][0]


def test_missing_images_are_refilled_deterministically(data):
    records, _ = data
    available = {image_name(i) for i in range(N_GOOD)}
    full = sample_records(records, n=N_GOOD, seed=0, available=available)
    assert len(full.pairs) == N_GOOD and full.skipped["missing_image"] == 1
    assert "pmc_9_0.jpg" not in {p.basename for p in full.pairs}
    # a smaller sample is the same draw with the missing record replaced by the next one
    small = sample_records(records, n=10, seed=1, available=available)
    unfiltered = sample_records(records, n=11, seed=1)
    assert {p.id for p in small.pairs} <= {p.id for p in unfiltered.pairs}
    with pytest.raises(DatasetError, match=r"only 30 of the 31 requested.*1 of those with an image missing"):
        sample_records(records, n=N_GOOD + 1, seed=0, available=available)


def test_iter_records_streams_arrays_and_json_lines(tmp_path, data):
    records, _ = data
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, indent=1))
    assert list(iter_records(path, chunk_chars=7)) == records
    lines = tmp_path / "b.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records[:5]) + "\n")
    assert list(iter_records(lines, chunk_chars=13)) == records[:5]
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps(records)[:-40])
    with pytest.raises(DatasetError, match=r"c\.json: not a JSON list"):
        list(iter_records(bad, chunk_chars=64))


# --------------------------------------------------------------------------- HTTPRangeFile


def test_range_file_matches_local_file(served, tmp_path, data):
    _, zips = data
    blob = zips["images_1.zip"]
    local = tmp_path / "z.zip"
    local.write_bytes(blob)
    url = pmv.file_url("images_1.zip", served.base)
    rng = np.random.default_rng(0)
    with HTTPRangeFile(url, block_size=1000, tail_size=3000) as remote, open(local, "rb") as fh:
        assert remote.seekable() and remote.readable() and remote.size == len(blob)
        ops = [(0, 0), (2, 0), (2, -10), (1, -5), (0, len(blob) - 100), (0, len(blob) + 50), (0, 123_456)]
        ops += [(int(w), int(o)) for w, o in zip(rng.integers(0, 3, 60), rng.integers(-4000, 4000, 60))]
        for whence, offset in ops:
            if whence == 0:
                offset = abs(offset)
            elif whence == 2:
                offset = -abs(offset)
            if (whence == 1 and fh.tell() + offset < 0) or (whence == 2 and len(blob) + offset < 0):
                continue
            assert remote.seek(offset, whence) == fh.seek(offset, whence)
            for size in (int(rng.integers(0, 5000)), 30, -1 if rng.random() < 0.1 else 7):
                assert remote.read(size) == fh.read(size)
                assert remote.tell() == fh.tell()
        remote.seek(10)
        fh.seek(10)
        assert remote.read() == fh.read() and remote.read(5) == fh.read(5) == b""
        buf_r, buf_f = bytearray(64), bytearray(64)
        remote.seek(-40, os.SEEK_END)
        fh.seek(-40, os.SEEK_END)
        assert remote.readinto(buf_r) == fh.readinto(buf_f) == 40 and buf_r == buf_f
        with pytest.raises(OSError):
            remote.seek(-1)
        with pytest.raises(OSError):
            fh.seek(-1)
        # the redirect was resolved once and its target reused
        assert sum(1 for p, _, _ in served.log if p.startswith(RESOLVE)) == 1
    with pytest.raises(ValueError):
        remote.read(1)


def test_zipfile_over_range_file_with_a_small_tail(served, data):
    """A central directory larger than the tail: zipfile seeks back for it and reads members."""
    _, zips = data
    url = pmv.file_url("images_0.zip", served.base)
    with HTTPRangeFile(url, block_size=512, tail_size=200) as fh, zipfile.ZipFile(fh) as remote:
        local = zipfile.ZipFile(io.BytesIO(zips["images_0.zip"]))
        assert remote.namelist() == local.namelist()
        for name in [n for n in local.namelist() if "filler" not in n][:5]:
            assert remote.read(name) == local.read(name)
        assert fh.bytes_fetched < len(zips["images_0.zip"]) / 10


def test_expired_redirect_target_is_resolved_again(served, data):
    _, zips = data
    blob = zips["images_1.zip"]
    with HTTPRangeFile(pmv.file_url("images_1.zip", served.base), block_size=100) as fh:
        served.expire_cdn = 1
        fh.seek(1234)
        assert fh.read(50) == blob[1234:1284]
    resolves = [r for p, r, _ in served.log if p.startswith(RESOLVE)]
    assert resolves == ["bytes=-1048576", "bytes=1234-1333"]


def test_range_file_errors(served):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*nothing\.zip"):
        HTTPRangeFile(pmv.file_url("nothing.zip", served.base))
    served.ignore_range = True
    with pytest.raises(RangeNotSupported, match=r"images_0\.zip: the server ignored the Range request \(HTTP 200\)"):
        HTTPRangeFile(pmv.file_url("images_0.zip", served.base))


# --------------------------------------------------------------------------- prepare


def check_store(folder, sample, records, seed=0):
    ds = load_dataset(folder)
    s = ds.samples
    assert len(s) == len(sample.pairs)
    by_id = expected_by_id(records)
    classes = sorted({p.label for p in sample.pairs})
    assert ds.class_names == classes
    assert s["label_name"].tolist() == [p.label for p in sample.pairs]
    assert s["group"].tolist() == s["label_name"].tolist()
    assert s["caption"].tolist() == [by_id[p.id]["conversations"][1]["value"] for p in sample.pairs]
    assert s["label"].tolist() == [classes.index(p.label) for p in sample.pairs]
    assert s["split"].tolist() == list(stratified_splits(s["label"].to_numpy(), pmv.SPLIT_FRACTIONS, seed))
    assert set(s["split"]) == {"train", "val", "test"}
    assert ds.images.shape == (len(s), 32, 32, 3)
    for row, pair in enumerate(sample.pairs):  # the right member was read
        i = int(re.match(r"pmc_(\d+)_0", pair.basename).group(1)) - 1000
        assert np.abs(ds.images[row].astype(int) - colour(i)).max() <= 6
    return ds


def test_prepare_reads_only_needed_members(served, tmp_path, data):
    records, zips = data
    sample = pmv.prepare_pubmedvision(tmp_path / "store", tmp_path / "cache", n=12, seed=0, size=32,
                                      base_url=served.base, zips=ZIPS)
    check_store(tmp_path / "store", sample, records)
    assert sample.skipped["multi_image"] == 4 and sample.skipped["no_body_part"] == 3
    zip_requests = served.zip_log()
    cdn = [(p, r, n) for p, r, n in zip_requests if p.startswith("/cdn/")]
    assert cdn and all(r is not None for _, r, _ in zip_requests)  # no whole-file GET
    fetched = sum(n for _, _, n in cdn)
    total = sum(len(z) for z in zips.values())
    assert fetched < 0.3 * total, (fetched, total)
    assert len(cdn) <= 2 + 2 * 12 + 2  # the tails, <= 2 requests per image, a central directory or two
    # redirects resolved once per zip
    assert sum(1 for p, _, _ in zip_requests if p.startswith(RESOLVE)) == len(ZIPS)
    assert not any(p.endswith("/pmc_9_0.jpg") for p, _, _ in served.log)


def test_prepare_skips_missing_image_with_count(served, tmp_path, data):
    records, _ = data
    sample = pmv.prepare_pubmedvision(tmp_path / "store", tmp_path / "cache", n=N_GOOD, seed=0, size=32,
                                      base_url=served.base, zips=ZIPS)
    assert sample.skipped["missing_image"] == 1 and len(sample.pairs) == N_GOOD
    check_store(tmp_path / "store", sample, records)


def test_too_many_missing_images_is_a_dataset_error(served, tmp_path):
    with pytest.raises(DatasetError, match=r"only 15 of the 20 requested.*16 of those with an image missing"):
        pmv.prepare_pubmedvision(tmp_path / "store", tmp_path / "cache", n=20, seed=0, size=32,
                                 base_url=served.base, zips=ZIPS[:1])
    assert not (tmp_path / "store" / "images.npy").exists()


def test_full_download_gives_the_same_store(served, tmp_path, data):
    records, zips = data
    kwargs = dict(n=N_GOOD, seed=5, size=32, base_url=served.base, zips=ZIPS)
    remote = pmv.prepare_pubmedvision(tmp_path / "remote", tmp_path / "cache_r", **kwargs)
    local = pmv.prepare_pubmedvision(tmp_path / "local", tmp_path / "cache_l", full_download=True, **kwargs)
    assert remote.pairs == local.pairs
    a, b = check_store(tmp_path / "remote", remote, records, 5), check_store(tmp_path / "local", local, records, 5)
    assert a.samples.equals(b.samples) and np.array_equal(a.images, b.images)
    for name in ZIPS:  # downloaded into the dataset folder, where the next run finds them placed
        assert (tmp_path / "cache_l" / name).read_bytes() == zips[name]
        assert (f"/cdn/{name}", None, len(zips[name])) in served.log  # one plain, whole-file GET


def test_unknown_zip_is_one_clear_error(served, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*images_7\.zip"):
        pmv.prepare_pubmedvision(tmp_path / "store", tmp_path / "cache", n=4, base_url=served.base,
                                 zips=["images_7.zip"])


# --------------------------------------------------------------------------- placed files, options, the job log


def place(folder, records, zips, names):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / pmv.JSON_NAME).write_text(json.dumps(records))
    for name in names:
        (folder / name).write_bytes(zips[name])
    return folder


def seed_avoiding_missing_image(records, n):
    """A seed whose first ``n`` eligible records all have their image (so no zip is searched in vain)."""
    for seed in range(100):
        if "pmc_9_0.jpg" not in {p.basename for p in sample_records(records, n=n, seed=seed).pairs}:
            return seed
    raise AssertionError("no such seed")


def test_placed_json_and_zips_need_no_network(served, tmp_path, data):
    records, zips = data
    folder = place(tmp_path / "placed", records, zips, ZIPS)
    kwargs = dict(n=N_GOOD, seed=2, size=32, base_url=served.base, zips=ZIPS)
    local = pmv.prepare_pubmedvision(tmp_path / "store", folder, **kwargs)
    assert served.log == []
    remote = pmv.prepare_pubmedvision(tmp_path / "store_r", tmp_path / "cache", **kwargs)
    assert served.log and local.pairs == remote.pairs and local.skipped == remote.skipped
    a, b = check_store(tmp_path / "store", local, records, 2), check_store(tmp_path / "store_r", remote, records, 2)
    assert a.samples.equals(b.samples) and np.array_equal(a.images, b.images)


def test_only_the_zips_the_sample_reaches_are_opened(served, tmp_path, data):
    records, zips = data
    folder = place(tmp_path / "placed", records, zips, ZIPS)
    listed = [*ZIPS, "images_2.zip"]  # neither placed nor served
    seed = seed_avoiding_missing_image(records, 12)  # 12 pairs: at least 3 of each body part
    sample = pmv.prepare_pubmedvision(tmp_path / "a", folder, n=12, seed=seed, size=32, base_url=served.base,
                                      zips=listed)
    assert len(sample.pairs) == 12 and served.log == []
    # the full sample meets the record whose image is in no placed zip: images_2.zip must be searched
    with pytest.raises(DownloadError) as err:
        pmv.prepare_pubmedvision(tmp_path / "b", folder, n=N_GOOD, seed=0, size=32, base_url=served.base,
                                 zips=listed, config_key="datasets.pmv")
    message = str(err.value)
    assert "\n" not in message and "images_2.zip is not in" in message and "zips: in datasets.pmv" in message
    assert not (tmp_path / "b" / "images.npy").exists()
    # following the message: list only the zips placed
    sample = pmv.prepare_pubmedvision(tmp_path / "b", folder, n=N_GOOD, seed=0, size=32, base_url=served.base,
                                      zips=ZIPS)
    assert sample.skipped["missing_image"] == 1


def spec_for(folder, base, **extra):
    return {"source": "pubmedvision", "path": str(folder), "url": base, "n_samples": 12, "image_size": 32,
            "zips": ZIPS, **extra}


class FakeSnakemake:
    threads = 1

    def __init__(self, log):
        self.log = [str(log)]


def test_skipped_counts_reach_the_job_log(served, tmp_path):
    from medtune import jobs
    from medtune.data import sources

    log = tmp_path / "prepare_dataset.log"
    jobs.run(lambda smk: sources.prepare("pmv", spec_for(tmp_path / "pmv", served.base), tmp_path / "store"),
             FakeSnakemake(log))
    text = log.read_text()
    assert "sampled 12 of 31 eligible records" in text
    assert "multi_image=4" in text and "no_body_part=3" in text and "no_caption=1" in text
    assert "opened 2 of 2 zips (range requests: images_" in text
