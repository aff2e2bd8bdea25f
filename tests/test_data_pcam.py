"""PCam conversion from small HDF5 fixtures, read in chunks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from medtune.data import pcam
from medtune.data.store import DatasetError, load_dataset

SIZES = {"train": 10, "valid": 4, "test": 3}


def write_split(raw, split, n, seed=0, n_labels=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (n if n_labels is None else n_labels, 1, 1, 1), dtype=np.uint8)
    with h5py.File(raw / pcam.h5_name(split, "x"), "w") as fh:
        fh.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
    with h5py.File(raw / pcam.h5_name(split, "y"), "w") as fh:
        fh.create_dataset("y", data=y)
    return x, y


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    arrays = {split: write_split(folder, split, n, seed=i) for i, (split, n) in enumerate(SIZES.items())}
    return folder, arrays


def test_convert_in_chunks(raw, tmp_path):
    folder, arrays = raw
    out = pcam.convert(folder, tmp_path / "pcam", chunk_size=3)  # smaller than every N
    data = load_dataset(out)
    assert data.images.shape == (17, 96, 96, 3)
    np.testing.assert_array_equal(data.images, np.concatenate([arrays[s][0] for s in SIZES]))
    labels = np.concatenate([arrays[s][1].reshape(-1) for s in SIZES])
    np.testing.assert_array_equal(data.samples["label"], labels)
    assert data.samples["split"].tolist() == ["train"] * 10 + ["val"] * 4 + ["test"] * 3
    assert set(data.samples["label_name"]) <= {"normal", "tumor"}
    assert (data.samples["label_name"] == np.where(labels == 1, "tumor", "normal")).all()
    assert set(data.samples["group"]) == {"lymph node"} and set(data.samples["caption"]) == {""}


def test_convert_selected_splits(raw, tmp_path):
    folder, arrays = raw
    data = load_dataset(pcam.convert(folder, tmp_path / "pcam", splits=("valid", "test"), chunk_size=2))
    assert data.samples["split"].tolist() == ["val"] * 4 + ["test"] * 3
    np.testing.assert_array_equal(data.images[:4], arrays["valid"][0])


def test_truncated_hdf5_named(raw, tmp_path):
    folder, _ = raw
    path = folder / pcam.h5_name("train", "x")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"{path.name}.*(truncated|corrupt)"):
        pcam.convert(folder, tmp_path / "pcam")
    assert not (tmp_path / "pcam" / "images.npy").exists()


def test_count_mismatch_named(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_split(folder, "test", 5, n_labels=4)
    with pytest.raises(DatasetError, match=r"split_test_y\.h5.*holds 5 images"):
        pcam.convert(folder, tmp_path / "pcam", splits=("test",))


def test_missing_file_named(tmp_path):
    with pytest.raises(DatasetError, match=r"camelyonpatch_level_2_split_valid_x\.h5: missing.*fetch"):
        pcam.convert(tmp_path, tmp_path / "pcam", splits=("valid",))


def test_unknown_split_refused(tmp_path):
    with pytest.raises(DatasetError, match="unknown PCam file"):
        pcam.convert(tmp_path, tmp_path / "pcam", splits=("val",))
