"""Atomic file output: a reader never sees a half-written file.

Every writer goes through :func:`atomic_path`, which yields a temporary sibling
and renames it over the target only when the body finished without error.
``tempfile`` creates its files 0600 and folders 0700 whatever the umask; outputs get
the mode a plain ``open``/``mkdir`` would give them, so colleagues on a shared file
system read ``results/`` as the umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def remove_stale_temporaries(target: Path) -> None:
    """Temporaries of an earlier attempt that was killed (SIGKILL skips every cleanup).

    Snakemake runs one job per output at a time, so nothing else can be writing them.
    """
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give a file made by ``tempfile`` the mode ``open`` would have: 0666 (folders 0777) less the umask."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())


def make_temp_dir(target: Path, suffix: str | None = None) -> Path:
    """An empty temporary sibling folder of ``target``, with the mode ``mkdir`` would give it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    honour_umask(tmp)
    return tmp


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    honour_umask(tmp_path)
    try:
        with _naming(target):
            yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """A write that fails without saying where (numpy's, pandas', a full disk's ``write()``)
    names the output it was writing, so the job's one-line error can. numpy's ``tofile``
    reports a full disk as a bare short write ("N requested and M written"): that becomes
    the ENOSPC it is."""
    try:
        yield
    except OSError as err:
        if err.errno is None and re.search(r"\d+ requested and \d+ written", str(err)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from err
        if err.filename is None:
            err.filename = str(target)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed to ``target`` only when the body finished."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = make_temp_dir(target)
    try:
        with _naming(target):
            yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(obj: Any, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(array: np.ndarray, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def write_csv(frame, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(text: str, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def save_torch(obj: Any, target: str | os.PathLike) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
