"""The source registry: agreement with the schema, lazy loading, and prepare through it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from medtune import plan
from medtune.data import sources
from medtune.data.folder import from_image_folder
from medtune.data.store import DatasetError, load_dataset

SCHEMA = yaml.safe_load(plan.SCHEMA_PATH.read_text())
DATASET_SCHEMA = SCHEMA["properties"]["datasets"]["additionalProperties"]


def test_schema_source_enum_is_the_registry():
    assert sorted(DATASET_SCHEMA["properties"]["source"]["enum"]) == sorted(sources.SOURCES)


def test_every_schema_dataset_key_is_honoured_by_some_source_and_vice_versa():
    honoured = set(sources.COMMON_KEYS)
    for source in sources.SOURCES.values():
        honoured |= set(source.keys)
        assert set(source.required) <= set(source.keys), source.name
    assert honoured == set(DATASET_SCHEMA["properties"])


def test_every_prepare_function_resolves():
    for source in sources.SOURCES.values():
        assert callable(source.load()), source.name


def test_reading_the_registry_imports_nothing_heavy():
    heavy = ("numpy", "pandas", "PIL", "h5py", "torch")
    code = f"import sys, medtune.data.sources; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prepare_goes_through_the_registry(tmp_path):
    root = tmp_path / "imgs"
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(10):  # enough for the drawn split to give each class train, val and test images
            Image.new("RGB", (10, 10), (50 * c, 20 * i, 0)).save(root / cls / f"{i}.png")
    sources.prepare("mine", {"source": "image_folder", "path": str(root), "image_size": 8, "seed": 3}, tmp_path / "via")
    from_image_folder(root, tmp_path / "direct", size=8, seed=3)
    via, direct = load_dataset(tmp_path / "via"), load_dataset(tmp_path / "direct")
    assert via.samples.equals(direct.samples) and np.array_equal(via.images, direct.images)


def test_prepare_names_a_missing_required_key_and_an_unknown_source(tmp_path):
    with pytest.raises(DatasetError, match=r"datasets\.raw\.path is required for source 'pcam'"):
        sources.prepare("raw", {"source": "pcam"}, tmp_path / "out")
    with pytest.raises(DatasetError, match=r"datasets\.x\.source: unknown source .camelyon16."):
        sources.prepare("x", {"source": "camelyon16"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def toy_prepare(name, spec, out_dir):
    """A dataset source defined outside the package: twelve flat grey images of two classes, a shade each."""
    from medtune.data.convert import ImageRef, write_image_dataset

    def png(level):
        import io

        out = io.BytesIO()
        Image.new("RGB", (4, 4), (level, level, level)).save(out, format="PNG")
        return out.getvalue()

    labels = [0, 0, 1, 1] * 3
    images = [ImageRef(f"toy:{i}", lambda v=60 * label + i: png(v)) for i, label in enumerate(labels)]
    splits = ["train", "test", "train", "test", "train", "val", "train", "val", "train", "test", "test", "train"]
    write_image_dataset(images, labels, splits, ["dark", "light"], out_dir, size=spec.get("image_size", 4))


def test_a_source_is_its_module_plus_one_registration_line(tmp_path, monkeypatch):
    toy = sources.Source("toy", "test_data_sources:toy_prepare", ("image_size",))
    monkeypatch.setitem(sources.SOURCES, "toy", toy)
    sources.prepare("mine", {"source": "toy", "image_size": 4}, tmp_path / "out")
    data = load_dataset(tmp_path / "out")
    assert data.class_names == ["dark", "light"] and data.images.shape == (12, 4, 4, 3)
    assert sources.config_problem({"mine": {"source": "toy", "seed": 1}}) == (
        "config key datasets.mine.seed: source 'toy' does not use it (it uses image_size)"
    )
