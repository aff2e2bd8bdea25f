"""What a dataset's preparation read, so that changed data rerun it and a mere touch does not.

The preparation job records every file it read in ``source.json`` beside the store: its
size, modification and change times, inode, and SHA-256. When the workflow builds its DAG,
:func:`state` lists the dataset's files again (names and ``stat`` only: about a second for
20,000 images on a busy 2-core machine; PCam is twelve files) and compares them with that
record; only a file whose ``stat`` differs is hashed. The result is a Snakemake param of
``prepare_dataset``:

* the data are what the store was made from (a touched or copied-back tree included) ->
  the value the store was made under, so nothing reruns;
* a file was added, removed or changed -> ``sha256:`` of the current files, a new value, so
  the preparation and everything downstream of it rerun, and no other dataset's jobs;
* no record (a store not made yet, or made before records existed) -> :data:`UNRECORDED`;
* none of the recorded files is there any more (deleted after preparation to save space, a
  drive not mounted) -> the store's value, with a note: the store is all there is.

The job writes the value it ran under into the record, so after a rerun the next DAG sees
the same value again. Sources that fetch into their folder (PCam, PubMedVision) are recorded
after the fetch: what the next DAG finds is what the job left. A file that changes *while*
the job reads it (a copy still running) stops the job naming the file; rerun when the copy
is complete.

This module imports nothing heavy: the Snakefile calls it for every DAG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

RECORD = "source.json"
UNRECORDED = "unrecorded"
PARTIAL_SUFFIXES = (".part",)  # a download in progress (medtune.data.download), not data


# ---------------------------------------------------------------- which files a source reads


def source_files(spec: Mapping[str, Any]) -> list[Path]:
    """The files the preparation of a dataset (its config ``spec``) reads, as far as they exist now."""
    from medtune.data.sources import SOURCES  # the registry names each source's listing

    source = SOURCES[spec["source"]]
    if source.files is None:
        return []
    return source.list_files(spec)


def files_under_path(spec: Mapping[str, Any]) -> list[Path]:
    """Every visible file under the dataset's ``path`` (a file itself when ``path`` is one),
    less unfinished downloads: the placed or fetched files of PCam, MHIST & co. (none without a path)."""
    if "path" not in spec:
        return []
    root = Path(spec["path"]).expanduser()
    if root.is_file():
        return [root]
    from medtune.data.convert import _unreadable

    found = []
    for folder, dirs, files in os.walk(root, onerror=_unreadable):  # links to folders are not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        found += [Path(folder) / f for f in sorted(files) if not f.startswith(".") and not f.endswith(PARTIAL_SUFFIXES)]
    return found


def image_folder_files(spec: Mapping[str, Any]) -> list[Path]:
    """The images the image-folder source reads, found as it finds them; what it would refuse
    (a class folder name that is not UTF-8, images outside class folders) stops the DAG now,
    not after every image was decoded."""
    from medtune.data.folder import scan_image_folder

    root = Path(spec["path"]).expanduser()
    return [image for image, _, _ in scan_image_folder(root)] if root.is_dir() else []


def manifest_files(spec: Mapping[str, Any]) -> list[Path]:
    """The manifest and every file it names, read as the manifest source reads it."""
    from medtune.data.convert import read_table
    from medtune.data.folder import manifest_paths

    manifest = Path(spec["path"]).expanduser()
    if not manifest.is_file():
        return []
    return [manifest, *manifest_paths(read_table(manifest, ["path", "label"]), manifest)]


# ---------------------------------------------------------------- the record and the state


def stat_key(st: os.stat_result) -> list[int]:
    """What a rewrite changes: a copy keeping the modification time still gets a new change time."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_sha256(path: Path, st: os.stat_result) -> str:
    """SHA-256 of a regular file; a FIFO or device is never opened (the job names it)."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({stat.S_IFMT(st.st_mode):o})"
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def snapshot(paths: Iterable[Path]) -> dict[str, os.stat_result]:
    found = {}
    for path in paths:
        try:
            found[str(path)] = os.stat(path)
        except OSError:
            continue  # vanished since it was listed, or a broken link: not read, so not recorded
    return found


def read_record(store: str | os.PathLike) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(store) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def state(spec: Mapping[str, Any], store: str | os.PathLike) -> str:
    """The ``prepare_dataset`` param: the value the store was made under while its files are what
    it read, else the digest of what they hold now (see the module's docstring)."""
    record = read_record(store)
    if record is None:
        return UNRECORDED
    now = snapshot(source_files(spec))
    recorded: dict[str, dict[str, Any]] = record["files"]
    if recorded and not now:  # deleted to save space, or a drive not mounted: the store is all there is
        print(f"medtune: none of the {len(recorded)} files {store} was prepared from is there now "
              f"(e.g. {next(iter(recorded))}); keeping the store", file=sys.stderr)
        return str(record.get("state", UNRECORDED))
    digests, restated = {}, False
    for path, st in now.items():
        entry = recorded.get(path)
        if entry is not None and entry.get("stat") == stat_key(st):
            digests[path] = entry["sha256"]
        else:
            digests[path], restated = file_sha256(Path(path), st), True
    if digests == {path: entry.get("sha256") for path, entry in recorded.items()}:
        if restated:  # touched, same bytes: remember the new times, or every later DAG would hash them again
            _restate(store, record, now)
        return str(record.get("state", UNRECORDED))
    return "sha256:" + content_digest(digests)


def _restate(store: str | os.PathLike, record: dict[str, Any], now: Mapping[str, os.stat_result]) -> None:
    """Rewrite the record with the files' current ``stat`` (their content was checked equal). Two
    workflows may do this at once: each writes a temporary of its own and renames it over the
    record. A results folder that cannot be written keeps the old record (hashing again next time)."""
    import tempfile

    from medtune.io import honour_umask

    for path, st in now.items():
        record["files"][path]["stat"] = stat_key(st)
    target = Path(store) / RECORD
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", suffix=".part", dir=store)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
        honour_umask(tmp)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def content_digest(digests: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def record_files(before: Mapping[str, os.stat_result], paths: Iterable[Path], *, fetched: bool, where: str) -> dict[str, Any]:
    """The record's ``files`` entry for what a preparation read: each file hashed once, and refused
    when it changed since the job began (``before``), or when files appeared that the job did not
    fetch itself (``fetched``: PCam, PubMedVision download into their folder)."""
    from medtune.data.store import DatasetError

    after = snapshot(paths)
    changed = sorted(p for p, st in before.items() if p not in after or stat_key(after[p]) != stat_key(st))
    added = [] if fetched else sorted(set(after) - set(before))
    if changed or added:
        what = f"{changed[0]} changed" if changed else f"{added[0]} appeared"
        raise DatasetError(
            f"{where}: {what} while the dataset was being prepared ({len(changed)} changed, {len(added)} added); "
            "the store would mix old and new data: rerun once the files are complete"
        )
    files = {}
    for path, st in after.items():
        digest = file_sha256(Path(path), st)
        if stat_key(os.stat(path)) != stat_key(st):
            raise DatasetError(f"{where}: {path} changed while the dataset was being prepared; rerun once the files are complete")
        files[path] = {"stat": stat_key(st), "sha256": digest}
    return files


def write_record(store: str | os.PathLike, state_value: str, files: Mapping[str, Any], **extra: Any) -> None:
    from medtune.io import write_json

    write_json({"state": state_value, "content": "sha256:" + content_digest({p: f["sha256"] for p, f in files.items()}),
                "files": dict(files), **extra}, Path(store) / RECORD)
