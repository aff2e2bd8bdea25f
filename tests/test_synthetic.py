import numpy as np

from medtune.data.store import load_dataset, write_dataset
from medtune.data.synthetic import CLASSES, SyntheticSpec, generate

SPEC = SyntheticSpec(sizes={"train": 60, "test": 30}, image_size=48, seed=5)


def test_deterministic_by_seed():
    a_img, a_rows = generate(SPEC)
    b_img, b_rows = generate(SPEC)
    assert np.array_equal(a_img, b_img)
    assert a_rows.equals(b_rows)
    c_img, _ = generate(SyntheticSpec(sizes=SPEC.sizes, image_size=48, seed=6))
    assert not np.array_equal(a_img, c_img)


def test_shapes_balance_and_captions():
    images, rows = generate(SPEC)
    assert images.shape == (90, 48, 48, 3) and images.dtype == np.uint8
    assert rows.groupby("split").size().to_dict() == {"test": 30, "train": 60}
    assert (rows[rows.split == "train"]["label"].value_counts() == 12).all()
    assert rows["group"].nunique() >= 2
    for _, row in rows.iterrows():
        assert row["label_name"] in row["caption"]
    assert rows["caption"].nunique() > 20


def test_generic_captions_do_not_name_the_class():
    _, rows = generate(SyntheticSpec(sizes={"pretrain": 40}, image_size=32, caption_style="generic"))
    for _, row in rows.iterrows():
        assert row["label_name"] not in row["caption"]


def test_classes_separable_by_simple_statistics():
    """Nearest class centroid on (mean RGB, dark-pixel share, white-pixel share) beats chance by far."""
    images, rows = generate(SyntheticSpec(sizes={"train": 150, "test": 100}, image_size=48, seed=1))
    x = images.astype(np.float32) / 255
    gray = x.mean(axis=3)
    feats = np.stack([*x.mean(axis=(1, 2)).T, (gray < 0.45).mean(axis=(1, 2)), (gray > 0.85).mean(axis=(1, 2))], axis=1)
    train, test = rows.split == "train", rows.split == "test"
    labels = rows["label"].to_numpy()
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-6
    z = (feats - mu) / sd
    centroids = np.stack([z[train & (labels == c)].mean(0) for c in range(len(CLASSES))])
    pred = ((z[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == labels[test]).mean() > 0.6  # chance is 0.2


def test_store_round_trip(tmp_path):
    images, rows = generate(SPEC)
    write_dataset(images, rows, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert isinstance(ds.images, np.memmap)
    assert np.array_equal(ds.images, images)
    assert ds.class_names == list(CLASSES)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["images.npy", "samples.csv"]
