"""Atomic outputs get the mode a plain ``open``/``mkdir`` gives under the same umask
(tempfile alone would make them 0600/0700, unreadable to colleagues on a shared
file system), and a body that fails leaves neither target nor temporary."""

import contextlib
import os
import stat
import zipfile

import numpy as np
import pandas as pd
import pytest

from medtune.data.archives import safe_extract
from medtune.io import atomic_dir, atomic_path, current_umask, save_torch, write_csv, write_json, write_npy, write_text


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_modes(folder):
    """The reference: what ``open`` and ``mkdir`` give under the current umask."""
    (folder / "plain.txt").write_text("x")
    (folder / "plain_dir").mkdir()
    return mode(folder / "plain.txt"), mode(folder / "plain_dir")


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        assert current_umask() == mask
        assert plain_modes(tmp_path) == (file_mode, dir_mode)
        write_json({"a": 1}, tmp_path / "out" / "a.json")
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "out" / "a.csv")
        write_npy(np.zeros(3), tmp_path / "out" / "a.npy")
        write_text("x", tmp_path / "out" / "a.txt")
        save_torch({"w": 1}, tmp_path / "out" / "a.pt")
        with atomic_dir(tmp_path / "out" / "features") as tmp:
            np.save(tmp / "clean.npy", np.zeros(2))
        assert current_umask() == mask  # reading the umask put it back
    for name in ("a.json", "a.csv", "a.npy", "a.txt", "a.pt", "features/clean.npy"):
        assert mode(tmp_path / "out" / name) == file_mode, name
    assert mode(tmp_path / "out") == dir_mode
    assert mode(tmp_path / "out" / "features") == dir_mode


@pytest.mark.parametrize("mask, dir_mode", [(0o022, 0o755), (0o077, 0o700)])
def test_extracted_archive_folder_follows_the_umask(tmp_path, mask, dir_mode):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/x.txt", "x")
    with umask(mask):
        target = safe_extract(archive, tmp_path / "extracted")
    assert mode(target) == dir_mode


def test_a_failed_body_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
