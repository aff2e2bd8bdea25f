"""Safe zip/tar extraction and reading single zip members."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from medtune.data.archives import COMPLETE_MARKER, ArchiveError, read_zip_member, safe_extract


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_safe_extract_zip_is_complete_and_skipped_next_time(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"images/a.png": b"A", "b.txt": b"B"})
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "images" / "a.png").read_bytes() == b"A"
    assert (target / COMPLETE_MARKER).is_file()
    archive.unlink()  # a second call does not need the archive any more
    assert safe_extract(archive, tmp_path / "out") == target


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "..\\evil.txt"])
def test_zip_slip_refused(tmp_path, member):
    archive = make_zip(tmp_path / "slip.zip", {"ok.txt": b"ok", member: b"evil"})
    with pytest.raises(ArchiveError) as err:
        safe_extract(archive, tmp_path / "out")
    message = str(err.value)
    assert "slip.zip" in message and repr(member) in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["slip.zip"]  # no temp folder left


def test_zip_symlink_member_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("images/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match=r"link\.zip: refusing symlink member 'images/link\.png'"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def add_tar_member(tf, info, data=b""):
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def test_tar_extract_and_refusals(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        add_tar_member(tf, tarfile.TarInfo("d/a.txt"), b"hello")
    assert (safe_extract(good, tmp_path / "good") / "d" / "a.txt").read_bytes() == b"hello"

    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("x.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        add_tar_member(tf, info)
    with pytest.raises(ArchiveError, match=r"link\.tar: refusing link member 'x\.png'"):
        safe_extract(link, tmp_path / "link")

    slip = tmp_path / "slip.tar"
    with tarfile.open(slip, "w") as tf:
        add_tar_member(tf, tarfile.TarInfo("../evil.txt"), b"x")
    with pytest.raises(ArchiveError, match=r"slip\.tar: refusing member '\.\./evil\.txt'"):
        safe_extract(slip, tmp_path / "slip")
    assert not (tmp_path / "evil.txt").exists()


def test_existing_incomplete_target_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.txt": b"A"})
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="not a completed extraction"):
        safe_extract(archive, tmp_path / "out")


def test_corrupt_archive(tmp_path):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArchiveError, match=r"bad\.zip"):
        safe_extract(archive, tmp_path / "out")


def test_read_zip_member(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"images/a.png": b"A"})
    assert read_zip_member(archive, "images/a.png") == b"A"
    with zipfile.ZipFile(archive) as zf:
        assert read_zip_member(zf, "images/a.png") == b"A"
    with pytest.raises(ArchiveError, match=r"a\.zip: no member 'b\.png'"):
        read_zip_member(archive, "b.png")
    with pytest.raises(ArchiveError, match=r"nope\.zip: no such archive"):
        read_zip_member(tmp_path / "nope.zip", "a.png")


def test_read_zip_member_refuses_a_member_larger_than_the_limit(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/zeros.png", b"\0" * 1_000_000)  # ~1 kB packed
    assert archive.stat().st_size < 10_000
    with pytest.raises(ArchiveError, match=r"bomb\.zip: member 'images/zeros\.png' unpacks to 1000000 bytes"):
        read_zip_member(archive, "images/zeros.png", limit=999_999)
    assert len(read_zip_member(archive, "images/zeros.png", limit=1_000_000)) == 1_000_000
