import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from medtune.data import synthetic_captions as captions
from medtune.data import synthetic_render as render
from medtune.data.store import load_dataset, write_dataset
from medtune.data.synthetic import CENTRES, CLASSES, GROUPS, SPLIT_CENTRES, SyntheticSpec, generate, sample_plan
from medtune.subsets import stratified_subsets

SPEC = SyntheticSpec(sizes={"train": 90, "test": 45}, image_size=48, seed=5)
REPO = Path(__file__).resolve().parents[1]


def test_deterministic_by_seed():
    a_img, a_rows = generate(SPEC)
    b_img, b_rows = generate(SPEC)
    assert np.array_equal(a_img, b_img)
    assert a_rows.equals(b_rows)
    c_img, _ = generate(SyntheticSpec(sizes=SPEC.sizes, image_size=48, seed=6))
    assert not np.array_equal(a_img, c_img)


def test_same_bytes_on_every_machine():
    """Pinned digest of a small dataset. The renderer uses only exactly rounded arithmetic and
    PCG64 draws, so any machine must reproduce these bytes; a deliberate change to the
    generator changes them, and then this digest is updated with it."""
    images, rows = generate(SyntheticSpec(sizes={"pretrain": 20, "train": 30, "test": 20}, image_size=32, seed=11))
    digest = hashlib.sha256(images.tobytes() + "\n".join(rows["caption"]).encode()).hexdigest()
    assert digest == GOLDEN_DIGEST


GOLDEN_DIGEST = "3798d8b3b8383ee8fefcc12c02600ce27dc33f01d366272ec8985b8255270a37"


def test_each_split_has_its_own_streams():
    """Growing the train split leaves the test images (and their captions) unchanged."""
    small_img, small_rows = generate(SyntheticSpec(sizes={"train": 20, "test": 70}, image_size=32, seed=3))
    big_img, big_rows = generate(SyntheticSpec(sizes={"train": 150, "test": 70}, image_size=32, seed=3))
    small_test = small_rows[small_rows.split == "test"]
    big_test = big_rows[big_rows.split == "test"]
    assert np.array_equal(small_img[small_test["index"]], big_img[big_test["index"]])
    assert small_test["caption"].tolist() == big_test["caption"].tolist()


def test_shapes_balance_groups_and_centres():
    images, rows = generate(SPEC)
    assert images.shape == (135, 48, 48, 3) and images.dtype == np.uint8
    assert rows.groupby("split").size().to_dict() == {"test": 45, "train": 90}
    assert (rows[rows.split == "train"]["label"].value_counts() == 10).all()
    assert len(CLASSES) >= 8
    plan = sample_plan(SyntheticSpec(sizes={"pretrain": 3000, "train": 3000, "val": 300, "test": 3000}))
    assert set(plan["group"]) == set(GROUPS) and len(GROUPS) >= 3
    for split, centres in SPLIT_CENTRES.items():
        assert set(plan.loc[plan.split == split, "centre"]) == set(centres)
    held_out = set(SPLIT_CENTRES["test"])
    assert not held_out & (set(SPLIT_CENTRES["pretrain"]) | set(SPLIT_CENTRES["train"]) | set(SPLIT_CENTRES["val"]))
    assert len(CENTRES) >= 3


def test_centres_differ_in_stain_and_scanner():
    vectors = {(c.haematoxylin, c.eosin, c.h_intensity, c.e_intensity) for c in CENTRES}
    scanners = {(c.blur_sigma, c.noise) for c in CENTRES}
    assert len(vectors) == len(CENTRES) and len(scanners) == len(CENTRES)


def test_beer_lambert_against_the_formula():
    """Constant stain concentrations, no noise: I = 255 · I0 · exp(−(c_H · h + c_E · e)), per channel."""
    c_h = np.full((2, 4, 4), 0.7, dtype=np.float32)
    c_e = np.full((2, 4, 4), 0.4, dtype=np.float32)
    c_h[1] = 0.0
    h = np.array([[0.65, 0.70, 0.29]] * 2, dtype=np.float32)
    e = np.array([[0.07, 0.99, 0.11]] * 2, dtype=np.float32)
    white = np.array([[0.96, 0.95, 0.97]] * 2, dtype=np.float32)
    rgb = render.scan(c_h, c_e, h, e, white, np.zeros(2, dtype=np.float32), np.random.default_rng(0))
    for i in range(2):
        for ch in range(3):
            od = float(c_h[i, 0, 0]) * float(h[i, ch]) + float(c_e[i, 0, 0]) * float(e[i, ch])
            expected = 255 * float(white[i, ch]) * math.exp(-od)
            assert abs(int(rgb[i, 0, 0, ch]) - expected) <= 0.75, (i, ch)
    assert (rgb == rgb[:, :1, :1]).all()


def test_angle_table_is_exact_enough():
    angles = np.arange(24) * np.pi / 12
    assert np.allclose(render.COS24, np.cos(angles), atol=1e-15) and np.allclose(render.SIN24, np.sin(angles), atol=1e-15)
    assert np.allclose(render.SHEAR_TAN, np.tan(np.arange(-3, 4) * np.pi / 12), atol=1e-15)


def test_fibres_run_along_their_orientation():
    """A fibre field changes little along its direction and much across it."""
    rng = np.random.default_rng(0)
    for orientation in range(render.N_ANGLES):
        field = render.fibre_field(rng, 8, 64, np.full(8, orientation), np.zeros(8, dtype=np.float32), spacing=4.0)
        angle = render.fibre_sprite_angle(np.array([orientation]))[0] * np.pi / 12
        step = np.array([np.sin(angle), np.cos(angle)])  # (dy, dx) along the fibres
        along = np.round(3 * step).astype(int)
        across = np.round(3 * np.array([step[1], -step[0]])).astype(int)

        def change(d):
            shifted = np.roll(field, shift=(d[0], d[1]), axis=(1, 2))
            return np.abs(field - shifted)[:, 8:-8, 8:-8].mean()

        assert change(along) < 0.5 * change(across), orientation


def test_captions_vary_and_are_noisy_like_web_pairs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 6000)
    organs = [GROUPS[i % 3] for i in range(6000)]
    texts, kinds = captions.pathology_captions(labels, organs, CLASSES, rng)
    shares = np.bincount(kinds, minlength=len(captions.KIND_NAMES)) / len(kinds)
    assert np.allclose(shares, captions.KIND_SHARES, atol=0.02)
    wrong = captions.KIND_NAMES.index("wrong")
    assert 0.02 <= shares[wrong] <= 0.06  # a few per cent of the captions describe another tissue
    assert len(set(texts)) > 1000
    names = {c: [n.lower() for n in captions.NAMES[c]] for c in CLASSES}
    for text, label, kind in zip(texts, labels, kinds):
        text = text.lower()
        own = any(n in text for n in names[CLASSES[label]])
        kind = captions.KIND_NAMES[kind]
        if kind in ("named", "ambiguous"):
            assert own, text
        if kind == "wrong":
            # names another tissue; may share a word with its own ("tumour stroma" vs "tumour epithelium")
            assert any(n in text for c in CLASSES if c != CLASSES[label] for n in names[c]), text
        if kind in ("look", "bare"):
            assert not any(n in text for c in CLASSES for n in names[c] if len(n) > 4), text


def test_generic_captions_name_no_tissue():
    plan = sample_plan(SyntheticSpec(sizes={"pretrain": 500}, caption_style="generic"))
    every_name = [n.lower() for names in captions.NAMES.values() for n in names]
    for text in plan["caption"]:
        assert not any(n in text.lower() for n in every_name), text


def test_default_config_subsets_are_distinct_and_hold_two_per_class():
    """With the default's train split, every fraction of every seed is a different subset,
    and the smallest holds at least 2 samples of each class."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    spec = config["datasets"]["synthetic"]
    plan = sample_plan(SyntheticSpec(sizes={"train": spec["sizes"]["train"]}, seed=spec["seed"]))
    assert len(plan) >= 20_000
    fractions = sorted({f for study in config["studies"].values() for f in study.get("fractions", [])})
    for seed in config["seeds"]:
        subsets = stratified_subsets(plan, fractions, seed)
        keys = [frozenset(subsets[f]["index"]) for f in fractions]
        assert len(set(keys)) == len(fractions), seed
        assert subsets[fractions[0]]["label"].value_counts().min() >= 2


def _features(images: np.ndarray) -> np.ndarray:
    """Colour and texture statistics: mean and spread of RGB, dark/white shares, gradient energy."""
    x = images.astype(np.float32) / 255
    gray = x.mean(axis=3)
    grad = np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    return np.column_stack([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), (gray < 0.45).mean(axis=(1, 2)), (gray > 0.85).mean(axis=(1, 2)), grad])


def test_classes_learnable_but_overlapping():
    """A classifier on simple statistics beats chance (1/9) by far, yet is not perfect even on
    its own centres, and loses much more at the held-out centre (the stain shift)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    images, rows = generate(SyntheticSpec(sizes={"train": 900, "val": 450, "test": 450}, image_size=32, seed=2))
    feats, labels = _features(images), rows["label"].to_numpy()
    train, val, test = ((rows.split == s).to_numpy() for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(feats[train])
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(feats[train]), labels[train])
    same_centres = model.score(scaler.transform(feats[val]), labels[val])
    held_out = model.score(scaler.transform(feats[test]), labels[test])
    assert 0.6 < same_centres < 0.97
    assert 0.3 < held_out < same_centres - 0.1


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown synthetic class"):
        generate(SyntheticSpec(sizes={"train": 4}, classes=("tumor",)))
    with pytest.raises(ValueError, match="unknown synthetic split"):
        generate(SyntheticSpec(sizes={"holdout": 4}))
    with pytest.raises(ValueError, match="caption_style"):
        generate(SyntheticSpec(sizes={"train": 4}, caption_style="poetic"))


def test_class_subset():
    images, rows = generate(SyntheticSpec(sizes={"train": 12}, image_size=32, classes=("mucus", "debris")))
    assert rows["label_name"].tolist().count("mucus") == 6 and set(rows["label"]) == {0, 1}


def test_store_round_trip(tmp_path):
    images, rows = generate(SPEC)
    write_dataset(images, rows, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert isinstance(ds.images, np.memmap)
    assert np.array_equal(ds.images, images)
    assert ds.class_names == list(CLASSES)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["images.npy", "samples.csv"]
