"""Camelyon17-WILDS in its published layout, and the optional ``site`` column of every source that knows one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtune.data import sources
from medtune.data.camelyon17 import patch_path
from medtune.data.store import DatasetError, load_dataset


def write_camelyon17(root, rows):
    """A tiny Camelyon17-WILDS: metadata.csv as WILDS' generate_final_metadata.py writes it (an unnamed
    index column first; patient zero-padded) and one flat-colour 96 px PNG per row under patches/."""
    table = pd.DataFrame(rows, columns=["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"])
    table.to_csv(root / "metadata.csv")
    for i, (patient, node, x, y, tumor, _, center, _) in enumerate(rows):
        path = root / patch_path(patient, str(node), str(x), str(y))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 96), (10 * i, 100 + 100 * tumor, 40 * center)).save(path)
    return table


# WILDS' patients 0-19 are hospital 0, 20-39 hospital 1, ... (center = patient // 20); split 1 = id_val
ROWS = [
    ("004", 4, 1000, 2000, 1, 0, 0, 0),
    ("005", 1, 1010, 2000, 0, 1, 0, 0),
    ("017", 2, 1020, 2000, 0, 2, 0, 1),   # id_val
    ("021", 0, 1030, 2000, 1, 10, 1, 0),  # hospital 1: val whatever its split value
    ("022", 3, 1040, 2000, 0, 11, 1, 1),
    ("041", 1, 1050, 2000, 1, 20, 2, 0),  # hospital 2: test
    ("044", 2, 1060, 2000, 0, 21, 2, 0),
    ("061", 0, 1070, 2000, 1, 30, 3, 0),
    ("062", 0, 1080, 2000, 0, 31, 3, 1),  # id_val
    ("081", 3, 1090, 2000, 0, 40, 4, 0),
    ("088", 4, 1100, 2000, 1, 41, 4, 0),
]


def test_camelyon17_splits_as_wilds_does(tmp_path):
    root = tmp_path / "camelyon17_v1.0"
    root.mkdir()
    write_camelyon17(root, ROWS)
    sources.prepare("c17", {"source": "camelyon17", "path": str(root)}, tmp_path / "store")
    ds = load_dataset(tmp_path / "store")
    s = ds.samples
    # hospitals 0, 3, 4 train (their id_val patches left out by default), 1 val, 2 test
    assert s["site"].tolist() == ["hospital0", "hospital0", "hospital1", "hospital1", "hospital2", "hospital2", "hospital3", "hospital4", "hospital4"]
    assert s["split"].tolist() == ["train", "train", "val", "val", "test", "test", "train", "train", "train"]
    assert s["label_name"].tolist() == ["tumor", "normal", "tumor", "normal", "tumor", "normal", "tumor", "normal", "tumor"]
    assert ds.class_names == ["normal", "tumor"] and ds.images.shape == (9, 96, 96, 3)
    # the image of each row is its own file (the colour encodes the row of metadata.csv)
    kept = [0, 1, 3, 4, 5, 6, 7, 9, 10]
    assert [int(v) for v in ds.images[:, 0, 0, 0]] == [10 * i for i in kept]


def test_camelyon17_id_val_can_join_the_validation_split(tmp_path):
    root = tmp_path / "c17"
    root.mkdir()
    write_camelyon17(root, ROWS)
    sources.prepare("c17", {"source": "camelyon17", "path": str(root), "id_val": "val", "image_size": 32}, tmp_path / "store")
    s = load_dataset(tmp_path / "store").samples
    val = s[s["split"] == "val"]
    assert sorted(val["site"]) == ["hospital0", "hospital1", "hospital1", "hospital3"]
    assert len(s) == len(ROWS)


def test_camelyon17_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata\.csv not found: download Camelyon17-WILDS"):
        sources.prepare("c17", {"source": "camelyon17", "path": str(tmp_path)}, tmp_path / "out")
    write_camelyon17(tmp_path, ROWS[:2])
    (tmp_path / patch_path("005", "1", "1010", "2000")).unlink()
    with pytest.raises(DatasetError, match=r"patch_patient_005_node_1_x_1010_y_2000\.png"):
        sources.prepare("c17", {"source": "camelyon17", "path": str(tmp_path)}, tmp_path / "out")
    assert not (tmp_path / "out" / "samples.csv").exists()


def test_the_synthetic_default_exposes_its_centres(tmp_path):
    spec = {"source": "synthetic", "image_size": 16, "sizes": {"pretrain": 6, "train": 40, "val": 10, "test": 40}, "seed": 0}
    sources.prepare("syn", spec, tmp_path / "syn")
    s = load_dataset(tmp_path / "syn").samples
    centres = s.groupby("split")["site"].agg(lambda v: sorted(set(v)))
    assert centres["test"] == ["D"] and set(centres["train"]) <= {"A", "B"} and set(centres["val"]) <= {"A", "B"}
    assert set(centres["pretrain"]) <= {"A", "B", "C"}


def test_a_manifest_and_a_folder_may_name_sites(tmp_path):
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [(f"{i}.png", "ab"[i % 2], ["train", "val", "test"][i // 2], f"centre{i % 3}") for i in range(6)]
    pd.DataFrame(rows, columns=["path", "label", "split", "site"]).to_csv(tmp_path / "m.csv", index=False)
    sources.prepare("m", {"source": "manifest", "path": str(tmp_path / "m.csv"), "image_size": 8}, tmp_path / "ms")
    assert load_dataset(tmp_path / "ms").samples["site"].tolist() == [r[3] for r in rows]
    # an empty site is named, not stored
    rows[2] = (*rows[2][:3], "")
    pd.DataFrame(rows, columns=["path", "label", "split", "site"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DatasetError, match=r"m\.csv line 4 \('2\.png'\): empty site"):
        sources.prepare("m", {"source": "manifest", "path": str(tmp_path / "m.csv"), "image_size": 8}, tmp_path / "ms2")
    # an image folder names one site for all its images; without one there is no site column
    for c in "ab":
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(12):  # distinct images, enough that a drawn split gives each class a val image
            Image.new("RGB", (8, 8), (0, 20 * i, 120 * (c == "b"))).save(tmp_path / "f" / c / f"{i}.png")
    sources.prepare("f", {"source": "image_folder", "path": str(tmp_path / "f"), "image_size": 8, "site": "scanner-2"}, tmp_path / "fs")
    assert set(load_dataset(tmp_path / "fs").samples["site"]) == {"scanner-2"}
    sources.prepare("g", {"source": "image_folder", "path": str(tmp_path / "f"), "image_size": 8}, tmp_path / "gs")
    assert "site" not in load_dataset(tmp_path / "gs").samples.columns
    assert np.array_equal(load_dataset(tmp_path / "fs").images, load_dataset(tmp_path / "gs").images)
