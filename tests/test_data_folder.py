"""Bring-your-own data (image folders, CSV manifests) and the shared conversion helper."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtune.data.convert import ImageRef, carve_validation, load_rgb, stratified_splits, write_image_dataset
from medtune.data.folder import from_image_folder, from_manifest
from medtune.data.store import DatasetError, load_dataset

SIZE = 8


MARKS = itertools.count(1)


def write_png(path, colour=(10, 20, 30), size=(12, 10), mode="RGB"):
    """An image of ``colour`` with a mark of its own in the middle: no two files are the same image
    (identical images in two splits would be dropped as duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    mark = next(MARKS)
    image.paste((mark * 37 % 256, mark * 11 % 256, mark // 7 % 256), (size[0] // 2 - 1, size[1] // 2 - 1, size[0] // 2 + 1, size[1] // 2 + 1))
    image.convert(mode).save(path)
    return path


# ------------------------------------------------------------ shared helper


def test_stratified_splits_deterministic_and_stratified():
    labels = [0] * 20 + [1] * 10
    a = stratified_splits(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=5)
    assert a.tolist() == stratified_splits(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=5).tolist()
    assert a.tolist() != stratified_splits(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=6).tolist()
    frame = pd.DataFrame({"label": labels, "split": a})
    assert frame.groupby(["label", "split"]).size().to_dict() == {
        (0, "test"): 4,
        (0, "train"): 12,
        (0, "val"): 4,
        (1, "test"): 2,
        (1, "train"): 6,
        (1, "val"): 2,
    }
    with pytest.raises(DatasetError, match="sum to 1"):
        stratified_splits(labels, {"train": 0.5, "test": 0.2})
    with pytest.raises(DatasetError, match="unknown split"):
        stratified_splits(labels, {"training": 1.0})


def test_carve_validation_moves_only_train():
    labels = [0, 1] * 10 + [0, 1] * 3
    splits = ["train"] * 20 + ["test"] * 6
    out = carve_validation(labels, splits, 0.2, seed=0)
    assert out[20:].tolist() == ["test"] * 6
    assert sorted(np.array(labels)[out == "val"].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_load_rgb_converts_modes_and_resizes(tmp_path, mode):
    path = tmp_path / f"a.{'jpg' if mode == 'CMYK' else 'png' if mode != 'I;16' else 'tif'}"
    if mode == "I;16":
        Image.new("I;16", (12, 10), 300).save(path)
    else:
        write_png(path, mode=mode)
    array = load_rgb(path, SIZE)
    assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8


def test_load_rgb_names_corrupt_and_missing(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=rf"cannot read image {bad}"):
        load_rgb(bad, SIZE)
    with pytest.raises(DatasetError, match=r"cannot read image .*gone\.png"):
        load_rgb(tmp_path / "gone.png", SIZE)
    with pytest.raises(DatasetError, match=r"cannot read image mem:x\.png"):
        load_rgb(ImageRef("mem:x.png", lambda: b"\x89PNG junk"), SIZE)


def test_write_image_dataset_leaves_nothing_on_error(tmp_path):
    good = write_png(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="b.png"):
        write_image_dataset([good, bad], [0, 1], ["train", "test"], ["x", "y"], tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out" / "images.npy").exists() and not (tmp_path / "out" / "samples.csv").exists()


# ------------------------------------------------------------ image folder


def test_image_folder_with_seeded_split(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        write_png(root / "tumor" / f"t{i}.png", (200, 0, 0))
        write_png(root / "normal" / f"n{i}.jpg", (0, 0, 200))
    write_png(root / ".hidden" / "x.png")
    (root / "tumor" / "notes.txt").write_text("ignored")
    data = load_dataset(from_image_folder(root, tmp_path / "out", size=SIZE, seed=2, group="colon"))
    s = data.samples
    assert data.class_names == ["normal", "tumor"]
    assert len(s) == 20 and set(s["group"]) == {"colon"}
    assert s.groupby(["label", "split"]).size().to_dict() == {
        (0, "test"): 2,
        (0, "train"): 7,
        (0, "val"): 1,
        (1, "test"): 2,
        (1, "train"): 7,
        (1, "val"): 1,
    }
    red = data.images[s["label"].to_numpy() == 1][:, 0, 0]
    assert (red[:, 0] > 150).all()
    again = load_dataset(from_image_folder(root, tmp_path / "again", size=SIZE, seed=2))
    assert again.samples["split"].tolist() == s["split"].tolist()


def test_image_folder_with_split_folders_and_class_list(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "valid", "test"):
        for cls in ("b", "a"):
            write_png(root / split / cls / f"{split}_{cls}.png")
    data = load_dataset(from_image_folder(root, tmp_path / "out", classes=["b", "a"], size=SIZE))
    assert data.class_names == ["b", "a"]
    assert sorted(data.samples["split"]) == ["test", "test", "train", "train", "val", "val"]
    with pytest.raises(DatasetError, match=r"label 'a' of .*a\.png is not in the class list \['b'\]"):
        from_image_folder(root, tmp_path / "out2", classes=["b"], size=SIZE)


def test_image_folder_refuses_mixed_layout_and_empty(tmp_path):
    root = tmp_path / "data"
    write_png(root / "train" / "a" / "x.png")
    write_png(root / "tumor" / "y.png")
    with pytest.raises(DatasetError, match="mixes split folders"):
        from_image_folder(root, tmp_path / "out", size=SIZE)
    with pytest.raises(DatasetError, match="no such image folder"):
        from_image_folder(tmp_path / "nowhere", tmp_path / "out", size=SIZE)
    loose = tmp_path / "loose"
    write_png(loose / "a" / "x.png")
    write_png(loose / "y.png")
    with pytest.raises(DatasetError, match=r"y\.png lies outside a class folder"):
        from_image_folder(loose, tmp_path / "out", size=SIZE)


# ---------------------------------------------------------------- manifest


def test_manifest_with_all_columns(tmp_path):
    root = tmp_path / "m"
    write_png(root / "img" / "a.png", (255, 0, 0))
    write_png(root / "img" / "b.png", (0, 255, 0), mode="L")
    write_png(tmp_path / "elsewhere.png", (0, 0, 255))
    pd.DataFrame(
        {
            "path": ["img/a.png", "img/b.png", str(tmp_path / "elsewhere.png")],
            "label": ["tumor", "normal", "tumor"],
            "caption": ["a red patch", "", "a blue patch"],
            "split": ["train", "validation", "test"],
            "group": ["lung", "lung", "colon"],
        }
    ).to_csv(root / "manifest.csv", index=False)
    data = load_dataset(from_manifest(root / "manifest.csv", tmp_path / "out", size=SIZE))
    s = data.samples
    assert data.class_names == ["normal", "tumor"]
    assert s["label"].tolist() == [1, 0, 1]
    assert s["split"].tolist() == ["train", "val", "test"]
    assert s["caption"].tolist() == ["a red patch", "", "a blue patch"]
    assert s["group"].tolist() == ["lung", "lung", "colon"]
    assert tuple(data.images[0, 0, 0]) == (255, 0, 0) and tuple(data.images[2, 0, 0]) == (0, 0, 255)


def test_manifest_minimal_columns_seeded_split(tmp_path):
    rows = []
    for i in range(12):
        write_png(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "x" if i % 3 else "y"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    data = load_dataset(
        from_manifest(tmp_path / "m.csv", tmp_path / "out", size=SIZE, fractions={"train": 0.5, "test": 0.5})
    )
    assert data.samples["split"].value_counts().to_dict() == {"train": 6, "test": 6}
    assert set(data.samples["caption"]) == {""} and set(data.samples["group"]) == {""}


def test_manifest_errors_name_the_culprit(tmp_path):
    write_png(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png", "gone.png"], "label": ["x", "y"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DatasetError, match=r"cannot read image .*gone\.png"):
        from_manifest(tmp_path / "m.csv", tmp_path / "out", size=SIZE, fractions={"train": 1.0})
    with pytest.raises(DatasetError, match=r"label 'y' of gone\.png is not in the class list \['x'\]"):
        from_manifest(tmp_path / "m.csv", tmp_path / "out", size=SIZE, classes=["x"])
    pd.DataFrame({"path": ["a.png"], "label": ["x"], "split": ["dev"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DatasetError, match=r"s\.csv \(a\.png\): unknown split 'dev'"):
        from_manifest(tmp_path / "s.csv", tmp_path / "out", size=SIZE)
    pd.DataFrame({"file": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DatasetError, match=r"c\.csv: missing column\(s\) \['path'\]"):
        from_manifest(tmp_path / "c.csv", tmp_path / "out", size=SIZE)


def test_load_rgb_centre_crops_non_square(tmp_path):
    image = np.zeros((10, 30, 3), np.uint8)
    image[:, :10] = (255, 0, 0)  # left third red, the rest black
    Image.fromarray(image).save(tmp_path / "wide.png")
    array = load_rgb(tmp_path / "wide.png", SIZE)
    assert array.shape == (SIZE, SIZE, 3) and array[:, :, 0].max() < 60  # the red strip is cropped away


def test_image_folder_names_a_non_regular_image_entry_instead_of_dropping_it(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DatasetError, match=r"cannot read image .*b/gone\.png"):
        from_image_folder(tmp_path / "imgs", tmp_path / "out", size=SIZE)
    (tmp_path / "imgs" / "b" / "gone.png").unlink()
    (tmp_path / "imgs" / "b" / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(DatasetError, match=r"b/zero\.png is a character device, not an image file"):
        from_image_folder(tmp_path / "imgs", tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out" / "images.npy").exists()


def test_manifest_split_column_without_val_gets_a_carved_val(tmp_path):
    rows = []
    for i in range(40):
        write_png(tmp_path / f"{i}.png", (i, 0, 0))
        rows.append({"path": f"{i}.png", "label": "x" if i % 2 else "y", "split": "test" if i >= 30 else "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    s = load_dataset(from_manifest(tmp_path / "m.csv", tmp_path / "out", size=SIZE, seed=1)).samples
    assert s["split"].tolist()[30:] == ["test"] * 10
    expected = carve_validation(s["label"][:30].to_numpy(), ["train"] * 30, 0.1, seed=1)
    assert s["split"].tolist()[:30] == expected.tolist() and (expected == "val").sum() == 4  # 2 of 15 per class
