"""MHIST, Osteosarcoma and WSSS4LUAD converters on tiny user-placed fixtures."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtune.data import manual
from medtune.data.manual import MissingDataError
from medtune.data.store import DatasetError, load_dataset

SIZE = 16


def write_png(path, colour, size=(24, 20), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)
    return path


# ------------------------------------------------------------------ MHIST


def mhist_fixture(folder, as_zip=True, n_train=20, n_test=6):
    rows = []
    for i in range(n_train + n_test):
        label = "HP" if i % 2 else "SSA"
        rows.append(
            {
                "Image Name": f"MHIST_{i:03d}.png",
                "Majority Vote Label": label,
                "Number of Annotators who Selected SSA (Out of 7)": 3,
                "Partition": "train" if i < n_train else "test",
            }
        )
        write_png(
            folder / "staging" / "images" / rows[-1]["Image Name"], (10 * i, 0, 0) if label == "HP" else (0, 10 * i, 0)
        )
    pd.DataFrame(rows).to_csv(folder / "annotations.csv", index=False)
    if as_zip:
        with zipfile.ZipFile(folder / "images.zip", "w") as zf:
            for p in sorted((folder / "staging" / "images").iterdir()):
                zf.write(p, f"images/{p.name}")
    else:
        (folder / "staging" / "images").rename(folder / "images")
    return rows


@pytest.mark.parametrize("as_zip", [True, False])
def test_mhist_converts_with_carved_validation(tmp_path, as_zip):
    folder = tmp_path / "mhist"
    rows = mhist_fixture(folder, as_zip=as_zip)
    data = load_dataset(manual.convert_mhist(folder, tmp_path / "out", size=SIZE, val_fraction=0.2, seed=1))
    s = data.samples
    assert data.images.shape == (26, SIZE, SIZE, 3)
    assert s["split"].value_counts().to_dict() == {"train": 16, "test": 6, "val": 4}
    assert (s.loc[s["split"] == "val", "label"].value_counts() == 2).all()  # stratified
    assert s["label"].tolist() == [0 if r["Majority Vote Label"] == "HP" else 1 for r in rows]
    assert data.class_names == ["hyperplastic polyp", "sessile serrated adenoma"]
    assert tuple(data.images[1, 0, 0]) == (10, 0, 0)  # image 1 is HP, red 10
    again = load_dataset(manual.convert_mhist(folder, tmp_path / "again", size=SIZE, val_fraction=0.2, seed=1))
    assert again.samples["split"].tolist() == s["split"].tolist()


def test_mhist_missing_files_message(tmp_path):
    folder = tmp_path / "mhist"
    with pytest.raises(MissingDataError) as err:
        manual.check_mhist(folder)
    message = str(err.value)
    assert "annotations.csv" in message and "images.zip" in message
    assert "https://bmirds.github.io/MHIST/" in message and str(folder) in message and "\n" not in message
    (folder).mkdir()
    (folder / "images.zip").write_bytes(b"")
    with pytest.raises(MissingDataError, match=r"missing annotations\.csv in"):
        manual.check_mhist(folder)


def test_mhist_unknown_label_named(tmp_path):
    folder = tmp_path / "mhist"
    mhist_fixture(folder, n_train=4, n_test=2)
    table = pd.read_csv(folder / "annotations.csv")
    table.loc[2, "Majority Vote Label"] = "TA"
    table.to_csv(folder / "annotations.csv", index=False)
    with pytest.raises(DatasetError, match=r"annotations\.csv: unknown label 'TA' for MHIST_002\.png"):
        manual.convert_mhist(folder, tmp_path / "out", size=SIZE)


def test_mhist_corrupt_image_in_zip_named(tmp_path):
    folder = tmp_path / "mhist"
    mhist_fixture(folder, n_train=4, n_test=2)
    with zipfile.ZipFile(folder / "images.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["images/MHIST_003.png"] = b"\x89PNG\r\n\x1a\n broken"
    with zipfile.ZipFile(folder / "images.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DatasetError, match=r"cannot read image .*images\.zip:images/MHIST_003\.png"):
        manual.convert_mhist(folder, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out" / "images.npy").exists()


def test_mhist_listed_image_absent_named(tmp_path):
    folder = tmp_path / "mhist"
    mhist_fixture(folder, as_zip=False, n_train=4, n_test=2)
    (folder / "images" / "MHIST_004.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 6 images annotations\.csv lists are not there \(e\.g\. 'MHIST_004\.png'\)"):
        manual.convert_mhist(folder, tmp_path / "out", size=SIZE)


# ------------------------------------------------------------- Osteosarcoma

OSTEO_ROWS = [
    ("Case 3 - A18-13", "Non-Tumor"),
    ("Case 3 - A18-14", "Non-Tumor"),
    ("Case 4 - B7 - 1", "Non-Tumor"),
    ("Case 4 - B7 - 2", "Non-Tumor"),
    ("Case 48 - P1-1", "Non-Viable-Tumor"),
    ("Case 48 - P1-2", "Non-Viable-Tumor"),
    ("Case 48 - P1-3", "Non-Viable-Tumor"),
    ("Case 48 - P1-4", "Non-Viable-Tumor"),
    ("Case 50 - Q1", "Viable"),
    ("Case 50 - Q2", "Viable"),
    ("Case 50 - Q3", "viable: non-viable"),
    ("Case 50 - Q4", "viable: non-viable"),
]


def osteo_fixture(folder):
    for i, (name, _) in enumerate(OSTEO_ROWS):
        file_name = name.replace(" - ", "-").replace(" ", "-") + ".jpg"
        write_png(folder / f"Training-Set-{1 + i % 2}" / "tiles" / file_name, (i * 20, 100, 50), size=(40, 40))
    pd.DataFrame(OSTEO_ROWS, columns=["image.name", "classification"]).assign(other=1.5).to_csv(
        folder / "ML_Features_1144.csv", index=False
    )


def test_osteosarcoma_three_classes_and_seeded_split(tmp_path):
    folder = tmp_path / "osteo"
    osteo_fixture(folder)
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    data = load_dataset(manual.convert_osteosarcoma(folder, tmp_path / "out", size=SIZE, fractions=fractions, seed=3))
    s = data.samples
    assert data.class_names == ["non-tumor", "non-viable necrotic tumor", "viable tumor"]
    assert s["label"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert s["split"].value_counts().to_dict() == {"train": 6, "val": 3, "test": 3}
    assert set(s["group"]) == {"bone"}
    assert data.images.shape == (12, SIZE, SIZE, 3)
    assert np.abs(data.images[5, 8, 8].astype(int) - (100, 100, 50)).max() <= 3  # JPEG tile of row 5
    again = load_dataset(
        manual.convert_osteosarcoma(folder, tmp_path / "again", size=SIZE, fractions=fractions, seed=3)
    )
    assert again.samples["split"].tolist() == s["split"].tolist()


def test_osteosarcoma_mapping_is_configurable(tmp_path):
    folder = tmp_path / "osteo"
    osteo_fixture(folder)
    two = {"Non-Tumor": "normal", "Non-Viable-Tumor": "tumor", "Viable": "tumor", "viable: non-viable": "tumor"}
    data = load_dataset(manual.convert_osteosarcoma(folder, tmp_path / "out", size=SIZE, classes=two))
    assert data.class_names == ["normal", "tumor"]


def test_osteosarcoma_unknown_label_named(tmp_path):
    folder = tmp_path / "osteo"
    osteo_fixture(folder)
    partial = {"Non-Tumor": "non-tumor", "Viable": "viable tumor"}
    with pytest.raises(
        DatasetError, match=r"ML_Features_1144\.csv: unknown label 'Non-Viable-Tumor' for Case 48 - P1-1"
    ):
        manual.convert_osteosarcoma(folder, tmp_path / "out", size=SIZE, classes=partial)


def test_osteosarcoma_missing_message(tmp_path):
    folder = tmp_path / "osteo"
    folder.mkdir()
    with pytest.raises(MissingDataError) as err:
        manual.check_osteosarcoma(folder)
    message = str(err.value)
    assert "ML_Features_1144.csv" in message and "image tiles" in message
    assert "10.7937/tcia.2019.bvhjhdas" in message and str(folder) in message
    write_png(folder / "Training-Set-1" / "a.jpg", (1, 2, 3))
    with pytest.raises(MissingDataError, match=r"missing ML_Features_1144\.csv in"):
        manual.check_osteosarcoma(folder)


# ---------------------------------------------------------------- WSSS4LUAD


def wsss_fixture(folder):
    tags = ["[1, 0, 0]"] * 5 + ["[0, 0, 1]"] * 5 + ["[1, 1, 0]", "[0, 1, 0]", "[1, 0, 1]"]
    for i, tag in enumerate(tags):
        write_png(folder / "1.training" / f"4362{i:02d}-7159-48057-{tag}.png", (i, 2 * i, 3 * i), size=(30 + i, 25))
    (folder / "1.training" / "readme.txt").write_text("not an image")
    return tags


def test_wsss4luad_binary_reduction_drops_with_count(tmp_path, caplog):
    folder = tmp_path / "wsss"
    wsss_fixture(folder)
    with caplog.at_level(logging.WARNING, logger="medtune.data.manual"):
        data = load_dataset(manual.convert_wsss4luad(folder, tmp_path / "out", size=SIZE, seed=0))
    assert "dropped 3 of 13 patches" in caplog.text
    assert data.class_names == ["normal", "tumor"]
    assert sorted(data.samples["label"].tolist()) == [0] * 5 + [1] * 5
    assert data.images.shape == (10, SIZE, SIZE, 3)
    assert set(data.samples["split"]) <= {"train", "val", "test"} and set(data.samples["group"]) == {"lung"}


def test_wsss4luad_mapping_from_string_keys(tmp_path):
    folder = tmp_path / "wsss"
    wsss_fixture(folder)
    classes = {"[1, 0, 0]": "tumor", "[0, 1, 0]": "stroma", "[0, 0, 1]": "normal"}
    data = load_dataset(manual.convert_wsss4luad(folder, tmp_path / "out", size=SIZE, classes=classes))
    assert data.class_names == ["tumor", "stroma", "normal"]
    assert len(data.samples) == 11


def test_wsss4luad_missing_message(tmp_path):
    folder = tmp_path / "wsss"
    with pytest.raises(MissingDataError) as err:
        manual.check_wsss4luad(folder)
    message = str(err.value)
    assert "[1, 0, 0].png" in message and "https://wsss4luad.grand-challenge.org/" in message and str(folder) in message


def test_wsss4luad_corrupt_patch_named(tmp_path):
    folder = tmp_path / "wsss"
    wsss_fixture(folder)
    bad = folder / "1.training" / "436200-7159-48057-[1, 0, 0].png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DatasetError, match=rf"cannot read image {bad}".replace("[", r"\[").replace("]", r"\]")):
        manual.convert_wsss4luad(folder, tmp_path / "out", size=SIZE)


def test_registries_cover_the_three_datasets():
    assert set(manual.CHECKS) == set(manual.CONVERTERS) == {"mhist", "osteosarcoma", "wsss4luad"}


def test_mhist_zip_ignores_macos_junk(tmp_path):
    folder = tmp_path / "mhist"
    mhist_fixture(folder, n_train=4, n_test=2)
    with zipfile.ZipFile(folder / "images.zip", "a") as zf:
        zf.writestr("__MACOSX/images/._MHIST_000.png", b"junk")
        zf.writestr("images/._MHIST_001.png", b"junk")
    data = load_dataset(manual.convert_mhist(folder, tmp_path / "out", size=SIZE))
    assert len(data.samples) == 6


def test_osteosarcoma_ambiguous_tile_named(tmp_path):
    folder = tmp_path / "osteo"
    osteo_fixture(folder)
    write_png(folder / "copy" / "Case 3 - A18-13.jpg", (0, 0, 0))
    with pytest.raises(DatasetError, match=r"several images match 'case-3-a18-13'"):
        manual.convert_osteosarcoma(folder, tmp_path / "out", size=SIZE)
