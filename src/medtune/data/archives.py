"""Safe archive extraction and reading images straight from a zip.

:func:`safe_extract` checks every member before writing anything: a member whose
path is absolute or resolves outside the target (zip-slip), a symlink, a hard
link or a device is refused with one line naming the archive and the member.
Members are extracted into a temporary sibling folder, a ``.complete`` marker is
written, and the folder is renamed to the target, so a target that exists is
complete.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from medtune.data.convert import MAX_IMAGE_BYTES
from medtune.data.store import DatasetError
from medtune.io import make_temp_dir

COMPLETE_MARKER = ".complete"


class ArchiveError(DatasetError):
    """A bad or unsafe archive; the message names the archive and the member."""


def is_complete(target: str | os.PathLike) -> bool:
    return (Path(target) / COMPLETE_MARKER).is_file()


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into ``target``; skip when it is already complete."""
    archive, target = Path(archive), Path(target)
    if is_complete(target):
        return target
    if target.exists():
        raise ArchiveError(f"{archive}: target {target} exists but is not a completed extraction; remove it and rerun")
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target, suffix=".part")
    try:
        _extract_into(archive, tmp)
        (tmp / COMPLETE_MARKER).write_text(f"extracted from {archive.name}\n")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_into(archive: Path, tmp: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    check_zip_member(archive, info)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    check_tar_member(archive, member)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                    tf.extractall(tmp, filter="data")
                else:
                    tf.extractall(tmp)
        else:
            raise ArchiveError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({exc})") from None


def check_member_path(archive: Path, name: str) -> None:
    """Refuse absolute names and names that climb out of the target."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise ArchiveError(f"{archive}: refusing member {name!r} with an absolute path")
    if ".." in posix.parts or ".." in windows.parts:
        raise ArchiveError(f"{archive}: refusing member {name!r} that escapes the target folder")


def check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    check_member_path(archive, info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{archive}: refusing symlink member {info.filename!r}")


def check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    check_member_path(archive, member.name)
    if member.issym() or member.islnk():
        raise ArchiveError(f"{archive}: refusing link member {member.name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: refusing special member {member.name!r}")


def read_zip_member(zip: str | os.PathLike | zipfile.ZipFile, name: str, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of one member; pass an open ``ZipFile`` to read many members cheaply.

    A member whose stated size exceeds ``limit`` is refused before reading (``zipfile``
    never inflates past the stated size), so a zip bomb cannot fill memory.
    """
    if isinstance(zip, zipfile.ZipFile):
        return _read_member(zip, name, Path(zip.filename or "<zip>"), limit)
    try:
        with zipfile.ZipFile(zip) as zf:
            return _read_member(zf, name, Path(zip), limit)
    except FileNotFoundError:
        raise ArchiveError(f"{zip}: no such archive") from None
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip}: corrupt zip archive ({exc})") from None


def _read_member(zf: zipfile.ZipFile, name: str, archive: Path, limit: int) -> bytes:
    try:
        size = zf.getinfo(name).file_size
        if size > limit:
            raise ArchiveError(f"{archive}: member {name!r} unpacks to {size} bytes, more than the {limit} allowed")
        return zf.read(name)
    except KeyError:
        raise ArchiveError(f"{archive}: no member {name!r}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"{archive}: cannot read member {name!r} ({exc})") from None
