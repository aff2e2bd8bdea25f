"""The canonical store's streaming writer and reader, which keep PCam-sized stores out of a job's RSS."""

import numpy as np
import pytest

from medtune.data import sources, synthetic
from medtune.data.store import DatasetError, image_writer, load_dataset, read_rows, read_samples, write_dataset


@pytest.fixture
def store(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
    with image_writer(tmp_path, images.shape) as out:
        out[0] = images[0]
        out[1:20] = images[1:20]
        for start in range(20, 37, 6):  # uneven chunks, the last one short
            out[start : start + 6] = images[start : start + 6]
    return images, np.load(tmp_path / "images.npy", mmap_mode="r")


def test_rows_written_in_chunks_make_the_same_npy_as_numpy(store, tmp_path):
    images, stored = store
    np.save(tmp_path / "reference.npy", images)
    assert np.array_equal(stored, images)
    assert (tmp_path / "images.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()


@pytest.mark.parametrize("indices", [np.arange(37), np.array([4, 5, 6, 30, 0, 1, 36]), np.array([], dtype=int),
                                     slice(3, 29), np.array([-1, 2])])
def test_read_rows_is_fancy_indexing(store, indices):
    images, stored = store
    rows = read_rows(stored, indices)
    assert not isinstance(rows, np.memmap) and not np.shares_memory(rows, stored)
    np.testing.assert_array_equal(rows, images[indices])


def test_read_rows_of_arrays_that_are_not_whole_maps(store):
    images, stored = store
    np.testing.assert_array_equal(read_rows(stored[10:20], np.array([0, 9])), images[[10, 19]])  # a slice keeps its parent's offset
    np.testing.assert_array_equal(read_rows(images, np.array([3, 1])), images[[3, 1]])


def test_writer_refuses_rows_out_of_place(tmp_path):
    with pytest.raises(ValueError, match="2 rows given for rows 0:3"), image_writer(tmp_path, (4, 2, 2, 3)) as out:
        out[0:3] = np.zeros((2, 2, 2, 3), np.uint8)
    assert not (tmp_path / "images.npy").exists()  # nothing half-written is left
    with pytest.raises(ValueError, match="3 rows given for rows 3:4"), image_writer(tmp_path, (4, 2, 2, 3)) as out:
        out[3:6] = np.zeros((3, 2, 2, 3), np.uint8)  # a slice is clipped to the rows there are, as numpy clips it
    with pytest.raises(IndexError, match="rows 4:5 outside 0:4"), image_writer(tmp_path, (4, 2, 2, 3)) as out:
        out[4] = np.zeros((2, 2, 3), np.uint8)


def test_synthetic_prepared_chunk_by_chunk_is_the_generated_dataset(tmp_path, monkeypatch):
    spec = {"source": "synthetic", "image_size": 16, "seed": 3, "sizes": {"train": 70, "val": 4, "test": 5}}
    real = synthetic.generate_chunks
    monkeypatch.setattr(synthetic, "generate_chunks", lambda s: real(s, chunk_size=32))  # several chunks in a split
    sources.prepare_synthetic("syn", spec, tmp_path / "chunked")  # the source alone: 5 test images miss classes
    images, rows = synthetic.generate(synthetic.SyntheticSpec(sizes=spec["sizes"], image_size=16, seed=3))
    write_dataset(images, rows.assign(site=rows["centre"]), tmp_path / "whole")  # the centre is the store's site
    chunked, whole = load_dataset(tmp_path / "chunked"), load_dataset(tmp_path / "whole")
    assert np.array_equal(chunked.images, whole.images) and chunked.samples.equals(whole.samples)


def test_read_samples_reads_only_the_columns_asked_for(tmp_path):
    images, rows = synthetic.generate(synthetic.SyntheticSpec(sizes={"train": 6}, image_size=8))
    write_dataset(images, rows, tmp_path)
    table = read_samples(tmp_path / "samples.csv", columns=["index", "label"])
    assert list(table.columns) == ["index", "label"] and table.equals(rows[["index", "label"]])
    with pytest.raises(DatasetError, match="samples.csv"):
        read_samples(tmp_path / "samples.csv", columns=["index", "centre"])
