"""The catalogue of bad inputs: each stops with one line naming the culprit, leaves no
partial output where a downstream rule would read it, and a fixed input then works.

The workflow-level faults (SIGKILL and resume, the lock, determinism across folders) are in
test_faults.py.
"""

import copy
import gzip
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import small_filesystem
from medtune import jobs, plan
from medtune.data import archives, convert, download, folder, manual, pcam, sources
from medtune.data.store import DatasetError, validate_samples, write_dataset
from medtune.models import BackboneError, load_backbone
from medtune.subsets import train_rows
from medtune.training import TrainingError
from test_data_download import md5, payload, server  # noqa: F401  (the local HTTP server fixture)
from test_data_pubmedvision import ZIPS, data, hub, place, served, spec_for  # noqa: F401  (the fake Hub fixtures)

DEFAULT = yaml.safe_load((plan.SCHEMA_PATH.parents[1] / "config.yaml").read_text())


def one_line(err: pytest.ExceptionInfo, *names: str) -> str:
    message = str(err.value)
    assert "\n" not in message.strip(), message
    for name in names:
        assert name in message, (name, message)
    return message


def bad_config(mutate) -> pytest.ExceptionInfo:
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(plan.ConfigError) as err:
        plan.validate(config)
    plan.validate(DEFAULT)  # the fixed (original) config passes
    return err


# ---------------------------------------------------------------- config


def test_config_unknown_key():
    one_line(bad_config(lambda c: c["methods"]["rfc"].update(learning_rate=1)), "methods.rfc", "learning_rate")


def test_config_wrong_type():
    one_line(bad_config(lambda c: c["methods"]["rfc"].update(epochs="five")), "methods.rfc.epochs", "five")


def test_config_fraction_outside_range():
    one_line(bad_config(lambda c: c["studies"]["clipath"].update(fractions=[0.1, 101])), "studies.clipath.fractions.1", "101")


def test_config_empty_seed_list():
    one_line(bad_config(lambda c: c.update(seeds=[])), "seeds")


def test_config_unknown_method():
    one_line(bad_config(lambda c: c["studies"]["clipath"]["methods"].append("adapter")), "studies.clipath.methods", "adapter")


def test_config_unknown_backbone():
    one_line(bad_config(lambda c: c["studies"]["clipath"].update(backbones=["vit-giant"])), "studies.clipath.backbones", "vit-giant")


def test_config_hyperparameter_out_of_range():
    one_line(bad_config(lambda c: c["methods"]["coop"].update(momentum=1.5)), "methods.coop.momentum", "1.5")


def test_config_duplicate_dataset_name(tmp_path):
    text = (plan.SCHEMA_PATH.parents[1] / "config.yaml").read_text()
    duplicated = text.replace("  synthetic-generic:", "  synthetic:", 1)
    path = tmp_path / "config.yaml"
    path.write_text(duplicated)
    with pytest.raises(plan.ConfigError) as err:
        plan.check_config_file(path)
    one_line(err, "'synthetic'", "twice", str(path))
    path.write_text(text)
    plan.check_config_file(path)


# ---------------------------------------------------------------- data


def test_dataset_folder_missing(tmp_path):
    with pytest.raises(manual.MissingDataError) as err:
        manual.convert_mhist(tmp_path / "nowhere", tmp_path / "out")
    one_line(err, "annotations.csv", "https://bmirds.github.io/MHIST/", str(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()


def test_gated_dataset_not_placed(tmp_path):
    placed = tmp_path / "osteo"
    placed.mkdir()
    with pytest.raises(manual.MissingDataError) as err:
        manual.convert_osteosarcoma(placed, tmp_path / "out")
    one_line(err, "ML_Features_1144.csv", "10.7937/tcia.2019.bvhjhdas", str(placed))


def test_checksum_mismatch(server, tmp_path):  # noqa: F811
    server.files["/x.h5.gz"] = payload()
    with pytest.raises(download.DownloadError) as err:
        download.download(f"{server.base}/x.h5.gz", tmp_path / "x.h5.gz", md5="0" * 32)
    one_line(err, "x.h5.gz", "0" * 32, md5(payload()))
    assert not list(tmp_path.iterdir())
    download.download(f"{server.base}/x.h5.gz", tmp_path / "x.h5.gz", md5=md5(payload()))


def test_truncated_download(server, tmp_path):  # noqa: F811
    server.files["/x.bin"] = payload()
    server.cut_after, server.cuts = 1000, 10
    with pytest.raises(download.DownloadError) as err:
        download.download(f"{server.base}/x.bin", tmp_path / "x.bin", retries=1)
    one_line(err, "x.bin", "truncated")
    assert not (tmp_path / "x.bin").exists()
    server.cuts = 0
    assert download.download(f"{server.base}/x.bin", tmp_path / "x.bin").read_bytes() == payload()


def test_truncated_gzip(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress(payload())[:-100])
    with pytest.raises(DatasetError) as err:
        download.gunzip(tmp_path / "a.gz", tmp_path / "a")
    one_line(err, "a.gz")
    assert not (tmp_path / "a").exists()


def _pcam_split(raw: Path, split: str, n: int, truncate: bool = False) -> None:
    for part, data in (("x", np.zeros((n, 96, 96, 3), np.uint8)), ("y", (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))):
        path = raw / pcam.h5_name(split, part)
        with h5py.File(path, "w") as f:
            f.create_dataset(part, data=data)
        if truncate and part == "x":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_hdf5(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _pcam_split(raw, "test", 4, truncate=True)
    with pytest.raises(DatasetError) as err:
        pcam.convert(raw, tmp_path / "out", splits=["test"])
    one_line(err, pcam.h5_name("test", "x"))
    assert not (tmp_path / "out" / "images.npy").exists()
    _pcam_split(raw, "test", 4)
    pcam.convert(raw, tmp_path / "out", splits=["test"])
    assert (tmp_path / "out" / "images.npy").exists()


def _image_folder(root: Path) -> None:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 100 * (cls == "b"), 0)).save(root / cls / f"{i}.png")  # six distinct images


def test_corrupt_image_named_by_path(tmp_path):
    _image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError) as err:
        folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", size=8)
    one_line(err, str(bad))
    assert not (tmp_path / "out" / "images.npy").exists()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(bad)
    folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", size=8)


def test_non_rgb_images_are_converted_not_dropped(tmp_path):
    _image_folder(tmp_path / "imgs")
    Image.new("L", (8, 8), 128).save(tmp_path / "imgs" / "a" / "0.png")
    Image.new("RGBA", (8, 8)).save(tmp_path / "imgs" / "b" / "0.png")
    folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", size=8)
    assert np.load(tmp_path / "out" / "images.npy").shape == (6, 8, 8, 3)


def test_label_file_with_unknown_class(tmp_path):
    _image_folder(tmp_path / "imgs")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": ["imgs/a/0.png", "imgs/b/0.png"], "label": ["a", "c"]}).to_csv(manifest, index=False)
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(manifest, tmp_path / "out", classes=["a", "b"], size=8)
    one_line(err, "'c'")
    assert not (tmp_path / "out" / "images.npy").exists()


def test_class_without_training_sample():
    samples = pd.DataFrame({"index": range(4), "split": ["train", "train", "test", "test"], "label": [0, 0, 1, 0], "label_name": ["a", "a", "b", "a"]})
    with pytest.raises(DatasetError) as err:
        train_rows(samples, "samples.csv")
    one_line(err, "samples.csv", "'b'")


def test_one_class_dataset_is_refused_at_preparation(tmp_path):
    """A one-class dataset would train to '100 %' and then have no AUC, F1 or retrieval to speak of."""
    images = np.zeros((4, 4, 4, 3), np.uint8)
    samples = pd.DataFrame({"index": range(4), "split": ["train", "val", "test", "test"], "label": 0, "label_name": "tumour",
                            "caption": "", "group": ""})
    with pytest.raises(DatasetError) as err:
        write_dataset(images, samples, tmp_path / "ds")
    one_line(err, "one class only ('tumour', 4 images)")
    assert not (tmp_path / "ds" / "images.npy").exists()


def test_image_label_count_mismatch(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    samples = pd.DataFrame({"index": range(2), "split": "train", "label": 0, "label_name": "a", "caption": "", "group": ""})
    with pytest.raises(DatasetError) as err:
        write_dataset(images, samples, tmp_path / "ds")
    one_line(err, "3 images but 2 sample rows")
    assert not (tmp_path / "ds" / "images.npy").exists()
    with pytest.raises(DatasetError):
        validate_samples(samples, 3, "x")


def _manifest(root: Path, rows: list[dict]) -> Path:
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _manifest_rows() -> list[dict]:
    return [{"path": f"imgs/{c}/{i}.png", "label": c} for c in ("a", "b") for i in range(3)]


def test_manifest_same_image_twice(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _image_folder(tmp_path / "imgs")
    rows = _manifest_rows()
    repeated = rows + [dict(rows[0]), {"path": "./imgs/b/2.png", "label": "b"}]  # the same files again
    out = folder.from_manifest(_manifest(tmp_path, repeated), tmp_path / "out", size=8)
    assert len(pd.read_csv(out / "samples.csv")) == 6  # identical rows kept once: no leak between splits
    assert "dropped 2 row(s)" in caplog.text and "lines 8, 9" in caplog.text
    conflicting = rows + [{"path": "imgs/a/1.png", "label": "b"}]
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(_manifest(tmp_path, conflicting), tmp_path / "out2", size=8)
    one_line(err, "lines 3 and 8", "'imgs/a/1.png'", "label", "'a' vs 'b'")
    assert not (tmp_path / "out2").exists()


def _i16(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint16))


HIGH_BIT_DEPTH = {  # mode -> (file format, image from a 0..1 ramp, the 8-bit value each pixel should get)
    "I;16": ("PNG", lambda r: _i16(np.rint(r * 65535)), lambda r: np.rint(np.rint(r * 65535) * 255 / 65535)),
    "I": ("TIFF", lambda r: Image.fromarray(np.rint(r * 65535).astype(np.int32)),
          lambda r: np.rint(np.rint(r * 65535) * 255 / 65535)),
    "F": ("TIFF", lambda r: Image.fromarray(r.astype(np.float32)), lambda r: np.rint(r.astype(np.float32) * 255.0)),
    "F wide": ("TIFF", lambda r: Image.fromarray((r * 4000 - 1000).astype(np.float32)),
               lambda r: np.rint(((r * 4000 - 1000).astype(np.float32) + 1000) * 255 / 4000)),
}


@pytest.mark.parametrize("mode", sorted(HIGH_BIT_DEPTH))
def test_high_bit_depth_images_keep_their_intensities(tmp_path, mode):
    fmt, make, expected = HIGH_BIT_DEPTH[mode]
    ramp = np.linspace(0, 1, 64).reshape(8, 8)  # bright values above 255 included: Pillow would clip them
    path = tmp_path / f"img.{fmt.lower()}"
    make(ramp).save(path, format=fmt)
    with Image.open(path) as opened:
        assert opened.mode == mode.split()[0]
    grey = convert.load_rgb(path, 8).astype(int)
    assert (grey[..., 0] == grey[..., 2]).all()
    assert np.abs(grey[..., 0] - expected(ramp)).max() <= 1 and grey.max() == 255 and grey.min() == 0
    for eight_bit in ("L", "RGBA", "P", "CMYK", "LA", "1", "YCbCr"):  # Pillow's own conversion is the reference
        image = Image.fromarray(np.uint8(np.rint(ramp * 255))).convert(eight_bit)
        image.save(tmp_path / "8.tif", format="TIFF")
        with Image.open(tmp_path / "8.tif") as opened:
            assert np.array_equal(convert.load_rgb(tmp_path / "8.tif", 8), np.asarray(opened.convert("RGB")))


def test_manifest_row_pointing_at_a_fifo_or_a_device(tmp_path):
    _image_folder(tmp_path / "imgs")
    os.mkfifo(tmp_path / "imgs" / "a" / "pipe.png")  # reading it would wait for a writer forever
    for bad, kind in (("imgs/a/pipe.png", "a FIFO"), ("/dev/zero", "a character device")):
        with pytest.raises(DatasetError) as err:
            folder.from_manifest(_manifest(tmp_path, _manifest_rows() + [{"path": bad, "label": "a"}]), tmp_path / "out", size=8)
        one_line(err, "manifest.csv line 8", repr(bad), kind)
        with pytest.raises(DatasetError) as err:  # the reader itself refuses, without blocking
            convert.load_rgb(tmp_path / bad, 8)
        one_line(err, kind)
    big = tmp_path / "imgs" / "a" / "0.png"
    with pytest.raises(DatasetError) as err:
        convert.read_image_file(big, limit=big.stat().st_size - 1)
    one_line(err, str(big), "more than")
    assert not (tmp_path / "out").exists()


def test_manifest_path_climbing_out_of_its_folder(tmp_path):
    root = tmp_path / "project" / "data"
    _image_folder(root / "imgs")
    rows = _manifest_rows() + [{"path": "imgs/../../../../../../etc/passwd", "label": "a"}]
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(_manifest(root, rows), tmp_path / "out", size=8)
    one_line(err, "line 8", "../etc/passwd", "outside the manifest's folder", "absolute path")
    assert not (tmp_path / "out").exists()
    # an absolute path is read where it points, as documented
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "elsewhere.png")
    rows[-1]["path"] = str(tmp_path / "elsewhere.png")
    folder.from_manifest(_manifest(root, rows), tmp_path / "out", size=8)


def test_train_and_test_folders_without_val(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "imgs"
    for split, n in (("train", 20), ("test", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 50 * (cls == "b"), 100 * (split == "test"))).save(root / split / cls / f"{i}.png")
    folder.from_image_folder(root, tmp_path / "out", size=8, seed=4)
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    counts = samples.groupby(["split", "label_name"]).size().to_dict()
    assert counts == {("test", "a"): 4, ("test", "b"): 4, ("train", "a"): 18, ("train", "b"): 18,
                      ("val", "a"): 2, ("val", "b"): 2}  # 10 % of each class's train
    assert "no validation split; carved" in caplog.text and str(root) in caplog.text
    folder.from_image_folder(root, tmp_path / "again", size=8, seed=4)
    assert pd.read_csv(tmp_path / "again" / "samples.csv").equals(samples)  # seeded
    for cls in ("a", "b"):  # too few to carve from: refused, naming the folder
        for extra in range(2, 20):
            (root / "train" / cls / f"{extra}.png").unlink()
    with pytest.raises(DatasetError) as err:
        folder.from_image_folder(root, tmp_path / "small", size=8)
    one_line(err, str(root), "no validation split", "add a val split")


def test_config_source_option_the_source_does_not_use():
    def add(**spec):
        return lambda c: c["datasets"].update(pcam={"source": "pcam", "path": "data/raw/pcam", **spec})

    one_line(bad_config(add(image_size=224)), "datasets.pcam.image_size", "'pcam' does not use it")
    one_line(bad_config(add(sizes={"train": 10})), "datasets.pcam.sizes", "'pcam' does not use it")
    one_line(bad_config(lambda c: c["datasets"]["synthetic"].update(path="x")), "datasets.synthetic.path")
    one_line(bad_config(lambda c: c["datasets"].update(mine={"source": "manifest"})), "datasets.mine.path", "required")
    config = copy.deepcopy(DEFAULT)
    config["datasets"]["pcam"] = {"source": "pcam", "path": "p", "url": "http://mirror", "verify": False,
                                  "md5": {"camelyonpatch_level_2_split_test_x.h5.gz": "0" * 32}}
    plan.validate(config)


def test_pcam_placed_file_with_another_md5(server, tmp_path):  # noqa: F811
    raw = tmp_path / "pcam"
    raw.mkdir()
    _pcam_split(raw, "test", 4)
    for part in ("x", "y"):  # placed as the .h5.gz that Zenodo serves, but not the published bytes
        h5 = raw / pcam.h5_name("test", part)
        (raw / f"{h5.name}.gz").write_bytes(gzip.compress(h5.read_bytes()))
        h5.unlink()
    gz = raw / f"{pcam.h5_name('test', 'x')}.gz"
    placed, found = gz.read_bytes(), md5(gz.read_bytes())
    with pytest.raises(DatasetError) as err:
        pcam.fetch(raw, base_url=server.base, splits=["test"], config_key="datasets.pcam")
    one_line(err, str(gz), found, pcam.MD5[gz.name], f"md5: {{{gz.name}: {found}}}", "verify: false", "datasets.pcam")
    assert server.requests == [] and gz.read_bytes() == placed  # nothing downloaded over it
    assert not (raw / pcam.h5_name("test", "x")).exists()
    y_gz = raw / f"{pcam.h5_name('test', 'y')}.gz"
    accepted = {**pcam.MD5, gz.name: found, y_gz.name: md5(y_gz.read_bytes())}
    pcam.fetch(raw, base_url=server.base, splits=["test"], md5s=accepted)
    assert (raw / pcam.h5_name("test", "x")).exists() and server.requests == []
    for part in ("x", "y"):
        (raw / pcam.h5_name("test", part)).unlink()
    pcam.fetch(raw, base_url=server.base, splits=["test"], verify=False)
    assert server.requests == []
    with pytest.raises(download.DownloadError) as err:  # the downloader alone will not overwrite it either
        download.download(f"{server.base}/{gz.name}", gz, md5=pcam.MD5[gz.name])
    one_line(err, str(gz), found, "not downloading over")
    assert gz.read_bytes() == placed


def test_pubmedvision_placed_files_and_a_server_without_range_support(served, tmp_path, data):  # noqa: F811
    records, zips = data
    placed = place(tmp_path / "placed", records, zips, ZIPS)
    sources.prepare("pmv", spec_for(placed, served.base), tmp_path / "local")
    assert served.log == []  # the placed JSON and zips are used first
    served.ignore_range = True
    with pytest.raises(DatasetError) as err:
        sources.prepare("pmv", spec_for(tmp_path / "pmv", served.base), tmp_path / "store")
    one_line(err, "ignored the Range request", "set full_download: true under datasets.pmv")
    assert not (tmp_path / "store").exists()
    spec = spec_for(tmp_path / "pmv", served.base, full_download=True)
    config = copy.deepcopy(DEFAULT)
    config["datasets"]["pmv"] = spec
    plan.validate(config)  # the option the message names is one the config accepts, and it works:
    sources.prepare("pmv", spec, tmp_path / "store")
    assert pd.read_csv(tmp_path / "store" / "samples.csv").equals(pd.read_csv(tmp_path / "local" / "samples.csv"))


# ---------------------------------------------------------------- archives


def test_zip_slip_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(archives.ArchiveError) as err:
        archives.safe_extract(archive, tmp_path / "out")
    one_line(err, "evil.zip", "../escaped.txt")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_symlink_member_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)  # a symlink's mode bits
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(archives.ArchiveError) as err:
        archives.safe_extract(archive, tmp_path / "out")
    one_line(err, "link.zip", "link")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- models


def test_unknown_open_clip_id():
    with pytest.raises(BackboneError) as err:
        load_backbone("mine", {"arch": "ViT-Q-99"})
    one_line(err, "ViT-Q-99")


def test_checkpoint_missing(tmp_path):
    with pytest.raises(BackboneError) as err:
        load_backbone("mine", {"arch": "medtune-tiny", "checkpoint": str(tmp_path / "gone.pt")})
    one_line(err, "mine", "gone.pt")


def test_checkpoint_for_another_architecture(tmp_path):
    torch.save({"visual.proj": torch.zeros(3, 3), "logit_scale": torch.tensor(1.0)}, tmp_path / "other.pt")
    with pytest.raises(BackboneError) as err:
        load_backbone("mine", {"arch": "medtune-tiny", "checkpoint": str(tmp_path / "other.pt")})
    one_line(err, "mine", "other.pt")


class NotATensor:
    pass


def test_pickle_checkpoint_refused_by_weights_only(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": NotATensor()}, fh)
    with pytest.raises(BackboneError) as err:
        load_backbone("mine", {"arch": "medtune-tiny", "checkpoint": str(tmp_path / "evil.pt")})
    one_line(err, "evil.pt", "weights_only")


# ---------------------------------------------------------------- training


def test_nan_loss_stops_with_step_and_lr_and_writes_no_checkpoint(tmp_path):
    from medtune.contrastive import ContrastiveConfig, train_contrastive

    backbone = load_backbone("tiny", {"arch": "medtune-tiny"})
    with torch.no_grad():
        backbone.model.logit_scale.fill_(float("nan"))
    images = np.zeros((4, 16, 16, 3), np.uint8)
    state = tmp_path / "resume_state.pt"
    with pytest.raises(TrainingError) as err:
        train_contrastive(backbone, images, np.arange(4), ["a"] * 4, ContrastiveConfig(epochs=1, batch_size=4, lr=0.01), torch.device("cpu"), state_path=state, progress=False)
    one_line(err, "step 0", "learning rate")
    assert not state.exists()


class FakeSnakemake:
    rule = "train_backbone"
    log: list = []
    threads = 1

    class params:  # noqa: N801  (mimics snakemake.params)
        method = {"name": "finetune_label", "module": "medtune.methods.finetune", "params": {"batch_size": 256, "grad_accum": 1}}


def test_out_of_gpu_memory_names_the_batch_size(capfd):
    def main(smk):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(SystemExit):
        jobs.run(main, FakeSnakemake())
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("medtune error:")]
    assert lines == [
        "medtune error: out of GPU memory in rule train_backbone at batch size 256 (micro-batches of 256); "
        "lower methods.finetune_label.batch_size (now 256) or raise methods.finetune_label.grad_accum (now 1), "
        "which splits each batch into micro-batches of batch_size/grad_accum with the same loss and gradients"
    ]

    class Frozen(FakeSnakemake):  # a frozen method has no grad_accum: only its batch size is named
        rule = "train_frozen"

        class params:  # noqa: N801
            method = {"name": "rfc", "module": "medtune.methods.rfc", "params": {"batch_size": 32}}

    assert jobs.oom_message(Frozen()) == (
        "out of GPU memory in rule train_frozen at batch size 32; lower methods.rfc.batch_size (now 32)"
    )


def test_catalogue_size():
    cases = [name for name in globals() if name.startswith("test_") and name != "test_catalogue_size"]
    assert len(cases) >= 20


# ---------------------------------------------------------------- faults of the machine, not the data

JOB_SCRIPT = """
import os, signal, sys, time
from medtune import jobs, io

class Smk:
    rule = "tables"
    log = [{log!r}]
    output = [{out!r}]
    threads = 1

def main(smk):
    with io.atomic_path(smk.output[0]) as tmp:
        tmp.write_bytes(b"half a table")
        print("ready", file=sys.__stdout__, flush=True)
        while True:
            signal.pause()

{run}
"""


def _job(tmp_path: Path, before_run: bool = False):
    """A job script whose work stops half-way through writing its output, in a fresh interpreter;
    returns the process once it says it is there (a line, not a guessed duration)."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "tables" / "clipath_accuracy.csv"
    run = 'print("ready", file=sys.__stdout__, flush=True)\nsignal.pause()' if before_run else "jobs.run(main, Smk())"
    script = JOB_SCRIPT.format(log=str(tmp_path / "job.log"), out=str(out), run=run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(jobs.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    # SIGINT at its default, as for a job a terminal runs: a process started in the background by a
    # non-interactive shell (a CI runner, `cmd &`) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "ready\n"
    return proc, out


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_interrupt_is_one_line_and_leaves_no_partial_file(tmp_path, signum):
    import signal

    proc, out = _job(tmp_path)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=60)
    what = "interrupted (Ctrl-C)" if signum == "SIGINT" else "terminated (SIGTERM)"
    assert err.splitlines() == [f"medtune error: {what} in rule tables; its outputs were not written and no partial "
                                "file remains: rerun to continue"], err
    assert proc.returncode == 130
    assert list(out.parent.iterdir()) == []  # the temporary was removed on the way out
    assert "Traceback" in (tmp_path / "job.log").read_text()  # the details stay in the log


def test_interrupt_while_a_job_imports_is_one_line(tmp_path):
    import signal

    proc, _ = _job(tmp_path, before_run=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert err.splitlines() == ["medtune error: interrupted before the job started its work; nothing was written"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs of this test's own (skipped where this user cannot mount one)."""
    with small_filesystem(tmp_path / "disk", "1m") as mount:
        yield mount


class DiskJob:
    rule = "figure"
    log: list = []
    threads = 1

    def __init__(self, output: Path):
        self.output = [str(output)]


def test_full_disk_names_the_path_and_the_free_space(small_disk, capfd):
    from medtune.io import write_npy

    target = small_disk / "figures" / "big.npy"
    with pytest.raises(SystemExit):
        jobs.run(lambda smk: write_npy(np.zeros(2 << 20, np.uint8), smk.output[0]), DiskJob(target))
    lines = [line for line in capfd.readouterr().err.splitlines() if "Traceback" in line or line.startswith("medtune")]
    assert len(lines) == 1 and lines[0].startswith(f"medtune error: no space left on the device writing {target} ("), lines
    assert f"free of 1.0 MB on {small_disk})" in lines[0] and "free some space and rerun" in lines[0]
    assert list(target.parent.iterdir()) == []  # nothing half-written
    jobs.run(lambda smk: write_npy(np.zeros(1000, np.uint8), smk.output[0]), DiskJob(target))  # space enough: it completes
    assert np.load(target).shape == (1000,)


def test_read_only_results_folder_is_one_line(small_disk, capfd):
    import subprocess

    (small_disk / "tables").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    target = small_disk / "tables" / "t.csv"
    with pytest.raises(SystemExit):
        jobs.run(lambda smk: pd.DataFrame({"a": [1]}).to_csv(smk.output[0]), DiskJob(target))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"medtune error: cannot write {target}: read-only file system (1.0 MB free of 1.0 MB on {small_disk}); "
                     "point results: at a writable folder"]


def test_config_results_naming_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a user's file")
    one_line(bad_config(lambda c: c.update(results="notes.txt")), "config key results: 'notes.txt'", "notes.txt is a file, not a folder")
    one_line(bad_config(lambda c: c.update(results="notes.txt/run1")), "notes.txt is a file")
    one_line(bad_config(lambda c: c.update(results="")), "config key results: empty")
    one_line(bad_config(lambda c: c["datasets"].update(mine={"source": "image_folder", "path": " "})),
             "config key datasets.mine.path: empty")  # not the working directory scanned for images
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    one_line(bad_config(lambda c: c.update(results="dangling/run1")), "dangling is a broken link")
    assert (tmp_path / "notes.txt").read_text() == "a user's file"
    monkeypatch.setenv("HOME", str(tmp_path))
    config = copy.deepcopy(DEFAULT)
    config["results"] = "~/medtune-results"  # not a folder named '~' in the working directory
    assert plan.validate(config)["results"] == str(tmp_path / "medtune-results")


@pytest.mark.parametrize("old, hint", [
    ({"methods": {"linear_probe": {"C": [1.0]}}}, "config key methods.linear_probe.C is from an earlier medtune: "
                                                  "the list of C values became a log grid: write C_range: [low, high]"),
    ({"methods": {"rfc": {"hidden_divisors": [4, 16, 4]}}}, "methods.rfc.hidden_divisors is from an earlier medtune: "
                                                            "renamed hidden_widths"),
    ({"methods": {"lp_aug": {"base": "linear_probe", "C": [1.0]}}}, "methods.lp_aug.C is from an earlier medtune"),
])
def test_config_from_an_earlier_version_says_what_replaced_the_key(old, hint):
    def mutate(config):
        for name, entry in old["methods"].items():
            config["methods"].setdefault(name, {}).update(entry)

    one_line(bad_config(mutate), hint)


def test_config_from_an_earlier_version_names_the_variant_to_declare():
    def mutate(config):
        config["methods"].pop("rfc_augmented")

    message = one_line(bad_config(mutate), "config key studies.clipath.methods: 'rfc_augmented' is no longer built in")
    assert message.endswith("declare it as a variant under methods: rfc_augmented: {base: rfc, train_conditions: augmented}")
    config = copy.deepcopy(DEFAULT)  # and what it says to write works
    config["methods"]["rfc_augmented"] = yaml.safe_load(message.rsplit("rfc_augmented: ", 1)[1])
    plan.validate(config)


def test_pcam_download_from_a_mirror_with_other_bytes_says_what_to_change(server, tmp_path):  # noqa: F811
    made = tmp_path / "made"
    made.mkdir()
    _pcam_split(made, "test", 4)
    for part in ("x", "y"):  # the mirror serves gzipped copies that are not Zenodo's bytes
        name = pcam.h5_name("test", part)
        server.files[f"/{name}.gz"] = gzip.compress((made / name).read_bytes())
    gz = f"{pcam.h5_name('test', 'x')}.gz"
    found = md5(server.files[f"/{gz}"])
    raw = tmp_path / "pcam"
    for _ in range(2):  # a rerun fails the same way: the message must not just say "rerun"
        with pytest.raises(DatasetError) as err:
            pcam.fetch(raw, base_url=server.base, splits=["test"], config_key="datasets.pcam")
        one_line(err, str(raw / gz), found, pcam.MD5[gz], "helps only if the transfer was corrupted",
                 f"accept it with md5: {{{gz}: {found}}}", "verify: false", "drop url: to download from https://zenodo.org")
        assert not list(raw.glob("*.h5*"))  # nothing kept that could pass for the file
    config = copy.deepcopy(DEFAULT)  # the keys it names are ones the config accepts
    config["datasets"]["pcam"] = {"source": "pcam", "path": str(raw), "url": server.base, "md5": {gz: found}}
    plan.validate(config)
    pcam.fetch(raw, base_url=server.base, splits=["test"], verify=False)
    assert (raw / pcam.h5_name("test", "x")).read_bytes() == (made / pcam.h5_name("test", "x")).read_bytes()


# ---------------------------------------------------------------- reads outside the data, names, encodings


def test_manifest_row_that_is_a_link_leading_outside_its_folder(tmp_path):
    root = tmp_path / "project" / "data"
    _image_folder(root / "imgs")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "private.png")
    (root / "imgs" / "a" / "innocent.png").symlink_to(tmp_path / "private.png")
    rows = _manifest_rows() + [{"path": "imgs/a/innocent.png", "label": "a"}]
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(_manifest(root, rows), tmp_path / "out", size=8)
    one_line(err, "line 8", "'imgs/a/innocent.png'", f"a link to {tmp_path / 'private.png'}", "outside the manifest's folder",
             "absolute path")
    assert not (tmp_path / "out").exists()
    (root / "imgs" / "b" / "inside.png").symlink_to(root / "imgs" / "b" / "0.png")  # a link that stays inside is read
    rows[-1] = {"path": "imgs/b/inside.png", "label": "b"}
    folder.from_manifest(_manifest(root, rows), tmp_path / "out", size=8)


def test_class_folder_name_that_is_not_utf8_is_named_before_decoding(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    latin1 = os.fsdecode(b"tumeur-\xe9pith\xe9lium")  # a Latin-1 name, as an old archive tool leaves it
    (tmp_path / "imgs" / "b").rename(tmp_path / "imgs" / latin1)
    decoded = []
    monkeypatch.setattr(convert, "load_rgb", lambda *a: decoded.append(a) or np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as err:
        folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", size=8)
    one_line(err, str(tmp_path / "imgs"), r"b'tumeur-\xe9pith\xe9lium' is not valid UTF-8", "rename it")
    assert decoded == [] and not (tmp_path / "out").exists()
    err.value.args[0].encode("utf-8")  # the message itself prints anywhere


def test_manifest_saved_by_excel(tmp_path):
    _image_folder(tmp_path / "imgs")
    rows = _manifest_rows()
    manifest = tmp_path / "manifest.csv"
    text = "path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows)
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8" starts with a byte-order mark
    folder.from_manifest(manifest, tmp_path / "bom", size=8)
    assert len(pd.read_csv(tmp_path / "bom" / "samples.csv")) == 6
    manifest.write_text(text.replace(",", ";"))  # Excel in a locale with decimal commas
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(manifest, tmp_path / "semicolons", size=8)
    one_line(err, str(manifest), "one column holding ';'", "separate columns with commas")
    manifest.write_bytes(text.replace("a\n", "caf\xe9\n").encode("latin-1"))  # a label saved as Latin-1
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(manifest, tmp_path / "latin1", size=8)
    one_line(err, str(manifest), "not UTF-8 text", r"b'\xe9'", "save it as UTF-8")
    assert not (tmp_path / "semicolons").exists() and not (tmp_path / "latin1").exists()


# ---------------------------------------------------------------- classes too small to split


def _class_folders(root: Path, sizes: dict[str, int]) -> None:
    for c, (cls, n) in enumerate(sizes.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * c, 7 * i, 0)).save(root / cls / f"{i}.png")


def test_class_too_small_to_reach_train_and_test_is_refused_at_preparation(tmp_path):
    """One or two images of a class land in train (and val) only: the tables would show accuracy 100 beside
    recall 75 and no AUC. Refused at preparation, every such class named with its counts."""
    _class_folders(tmp_path / "imgs", {"adipose": 12, "mucus": 1, "debris": 2})
    spec = {"source": "image_folder", "path": str(tmp_path / "imgs"), "image_size": 8}
    with pytest.raises(DatasetError) as err:
        sources.prepare("mine", spec, tmp_path / "store")
    one_line(err, "dataset 'mine'", "2 of 3 classes lack a train or a test image", "'debris': 1 train, 1 val, 0 test",
             "'mucus': 1 train, 0 val, 0 test", "add images or remove these classes")
    assert list((tmp_path / "store").iterdir()) == []  # no store that would give contradictory numbers
    for c, cls in enumerate(("mucus", "debris")):  # fixed as it says: enough images
        for i in range(3):
            Image.new("RGB", (8, 8), (99, 9 * i, 9 + c)).save(tmp_path / "imgs" / cls / f"extra{i}.png")
    sources.prepare("mine", spec, tmp_path / "store")


def test_classes_too_small_for_any_validation_image_name_the_dataset_and_the_cause(tmp_path):
    """Many classes of 3 images: each gets 2 train and 1 test image and validation ends up empty; the run
    used to stop after preparation with "split 'val' has no samples", naming neither."""
    _class_folders(tmp_path / "imgs", {f"tissue{k}": 3 for k in range(6)})
    spec = {"source": "image_folder", "path": str(tmp_path / "imgs"), "image_size": 8}
    with pytest.raises(DatasetError) as err:
        sources.prepare("tiny", spec, tmp_path / "store")
    one_line(err, "dataset 'tiny'", "no validation image in any of the 6 classes", "they have 3 to 3 images",
             "give a val split")
    assert list((tmp_path / "store").iterdir()) == []


def test_pubmedvision_body_parts_too_rare_for_a_test_image_are_left_out_and_logged(caplog):
    from medtune.data import pubmedvision
    from medtune.data.pubmedvision_records import Pair

    caplog.set_level(logging.INFO)
    parts = ["Chest"] * 5 + ["Brain"] * 3 + ["Foot"] * 2 + ["Hand"]
    pairs = [Pair(i, f"id{i}", f"images/{i}.jpg", "a caption", part) for i, part in enumerate(parts)]
    kept = pubmedvision.without_rare_parts(pairs)
    assert [p.label for p in kept] == ["Chest"] * 5 + ["Brain"] * 3
    assert "left out 2 body part(s) with fewer than 3 sampled pairs" in caplog.text
    assert "'Foot': 2, 'Hand': 1" in caplog.text and "8 of 11 pairs kept" in caplog.text


# ---------------------------------------------------------------- the same image in two splits


def test_same_image_in_train_and_test_under_two_names_is_dropped_from_train(tmp_path, caplog):
    """A copy placed in test/, the same slide exported twice: half the test set could be training images."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "imgs"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (20 * i, 60 * c, {"train": 0, "val": 90, "test": 180}[split])).save(
                    root / split / cls / f"{i}.png")
    leaked = root / "test" / "a" / "0.png"
    for copy_to in (root / "train" / "a" / "exported_twice.png", root / "val" / "b" / "relabelled.png",
                    root / "test" / "a" / "again.png"):  # the last is a copy within test: not a leak, kept
        copy_to.write_bytes(leaked.read_bytes())
    Image.open(leaked).save(root / "train" / "b" / "as.tif")  # the same pixels in another format
    folder.from_image_folder(root, tmp_path / "out", size=8)
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    images = np.load(tmp_path / "out" / "images.npy")
    assert samples.groupby("split").size().to_dict() == {"test": 7, "train": 12, "val": 4}  # 3 of 26 dropped
    assert len(images) == len(samples) == 23 and samples["index"].tolist() == list(range(23))
    same = (images == np.asarray(Image.open(leaked).convert("RGB"))).all(axis=(1, 2, 3))
    assert samples.loc[same, "split"].tolist() == ["test", "test"]  # only the held-out copies remain
    dropped = pd.read_csv(tmp_path / "out" / convert.DROPPED_DUPLICATES)
    assert sorted(dropped["file"]) == sorted(str(p) for p in (root / "train" / "a" / "exported_twice.png",
                                                              root / "train" / "b" / "as.tif", root / "val" / "b" / "relabelled.png"))
    assert set(dropped["kept"]) == {str(leaked)} and set(dropped["kept_split"]) == {"test"}
    assert "dropped 3 image(s) identical to one in a more held-out split (2 from train, 1 from val), 2 of them with " \
           "another label" in caplog.text
    for extra in ("exported_twice.png", "as.tif"):  # removed by the user: the listing goes too
        (root / "train" / ("a" if extra.endswith("png") else "b") / extra).unlink()
    (root / "val" / "b" / "relabelled.png").unlink()
    folder.from_image_folder(root, tmp_path / "out", size=8)
    assert not (tmp_path / "out" / convert.DROPPED_DUPLICATES).exists()
    assert len(pd.read_csv(tmp_path / "out" / "samples.csv")) == 23


# ---------------------------------------------------------------- data that change under the pipeline


@pytest.mark.parametrize("meanwhile", ["added", "changed"])
def test_data_changing_while_they_are_prepared_stop_the_job(tmp_path, monkeypatch, meanwhile):
    """A copy still running when the workflow starts: the store would mix old and new files."""
    from medtune.data import inventory

    _class_folders(tmp_path / "imgs", {"a": 10, "b": 10})
    spec = {"source": "image_folder", "path": str(tmp_path / "imgs"), "image_size": 8}
    real, calls = convert.load_rgb, []

    def copy_still_running(source, size):
        calls.append(source)
        if len(calls) == 5:
            target = tmp_path / "imgs" / "b" / ("late.png" if meanwhile == "added" else "3.png")
            Image.new("RGB", (8, 8), (1, 250, 1)).save(target)
        return real(source, size)

    monkeypatch.setattr(convert, "load_rgb", copy_still_running)
    with pytest.raises(DatasetError) as err:
        sources.prepare("mine", spec, tmp_path / "store")
    what = f"{tmp_path / 'imgs' / 'b' / 'late.png'} appeared" if meanwhile == "added" else f"{tmp_path / 'imgs' / 'b' / '3.png'} changed"
    one_line(err, "dataset 'mine'", what, "while the dataset was being prepared", "rerun once the files are complete")
    assert not list((tmp_path / "store").glob("*.npy")) and not (tmp_path / "store" / inventory.RECORD).exists()
    monkeypatch.setattr(convert, "load_rgb", real)
    sources.prepare("mine", spec, tmp_path / "store")  # the copy finished: the rerun records what it read
    record = inventory.read_record(tmp_path / "store")
    assert len(record["files"]) == (21 if meanwhile == "added" else 20)
    assert record["dataset"] == "mine" and record["duplicates_dropped"] == 0
    assert inventory.state(spec, tmp_path / "store") == inventory.UNRECORDED  # what the store was made under


def test_class_list_naming_a_class_without_images(tmp_path):
    """classes: [a, b, c] with no image of b: label 1 would be a gap, class_names would read [a, c], and every
    prompt after the gap would score another class's images."""
    _class_folders(tmp_path / "imgs", {"a": 10, "c": 10})
    with pytest.raises(DatasetError) as err:
        folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", classes=["a", "b", "c"], size=8)
    one_line(err, "class 'b' of the class list ['a', 'b', 'c'] has no images", "leave it out of classes:")
    assert not (tmp_path / "out").exists()
    samples = pd.DataFrame({"index": range(4), "split": "train", "label": [0, 0, 2, 2], "label_name": ["a", "a", "c", "c"],
                            "caption": "", "group": ""})
    with pytest.raises(DatasetError) as err:  # any source: a store with a gap in its labels is refused
        write_dataset(np.zeros((4, 4, 4, 3), np.uint8), samples, tmp_path / "ds")
    one_line(err, "no sample has label 1")
    folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", classes=["c", "a"], size=8)


def test_unreadable_class_folder_is_named_not_skipped(tmp_path, monkeypatch):
    """rglob skips a folder it may not read, and the class's images with it, in silence (as root, which the
    tests run as, nothing is unreadable: the refusal is simulated where os.walk lists a folder)."""
    _class_folders(tmp_path / "imgs", {"a": 10, "b": 10})
    locked, scandir = tmp_path / "imgs" / "b", os.scandir

    def no_permission(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    for read in (lambda: folder.from_image_folder(tmp_path / "imgs", tmp_path / "out", size=8),
                 lambda: sources.prepare("mhist", {"source": "mhist", "path": str(tmp_path / "imgs")}, tmp_path / "out")):
        with pytest.raises(DatasetError) as err:
            read()
        one_line(err, f"cannot read the folder {locked}: Permission denied")
    assert not (tmp_path / "out").exists()


def test_source_state_follows_content_not_times_and_keeps_a_store_whose_source_is_gone(tmp_path, capsys):
    """The param that reruns a preparation (the workflow test runs it through Snakemake): a touch keeps it,
    a change moves it, putting the old bytes back does not restore it (the store holds the changed ones),
    and a source deleted after preparation keeps the store."""
    from medtune.data import inventory

    _class_folders(tmp_path / "imgs", {"a": 10, "b": 10})
    spec, store = {"source": "image_folder", "path": str(tmp_path / "imgs"), "image_size": 8}, tmp_path / "store"
    assert inventory.state(spec, store) == inventory.UNRECORDED  # nothing prepared yet
    sources.prepare("mine", spec, store, state="made under this")
    image = tmp_path / "imgs" / "a" / "4.png"
    original = image.read_bytes()
    os.utime(image, ns=(1, 1))
    assert inventory.state(spec, store) == "made under this"
    entry = inventory.read_record(store)["files"][str(image)]  # the new times remembered: not hashed at every DAG
    assert entry["stat"] == inventory.stat_key(os.stat(image)) and not list(store.glob(".source.json.*"))
    Image.new("RGB", (8, 8), (255, 0, 255)).save(image)
    changed = inventory.state(spec, store)
    assert changed.startswith("sha256:") and changed == inventory.state(spec, store)  # the same for the same bytes
    sources.prepare("mine", spec, store, state=changed)
    assert inventory.state(spec, store) == changed  # after the rerun: nothing more to do
    image.write_bytes(original)
    assert inventory.state(spec, store) not in (changed, "made under this")
    sources.prepare("mine", spec, store, state="again")
    shutil.rmtree(tmp_path / "imgs")
    assert inventory.state(spec, store) == "again"
    assert "none of the 20 files" in capsys.readouterr().err


def test_manifest_typed_by_hand(tmp_path):
    """What a spreadsheet or a Windows user writes: spaces after commas in the header, 'Tumor' beside 'tumor',
    backslashes between folders."""
    _image_folder(tmp_path / "imgs")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path, label\n" + "".join(f"{r['path']}, {r['label']}\n" for r in _manifest_rows()))
    folder.from_manifest(manifest, tmp_path / "spaced", size=8)  # read as meant
    assert sorted(set(pd.read_csv(tmp_path / "spaced" / "samples.csv")["label_name"])) == ["a", "b"]
    rows = _manifest_rows()
    rows[1]["label"] = "A"
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(_manifest(tmp_path, rows), tmp_path / "cased", size=8)
    one_line(err, "labels 'A' and 'a' differ only in case or spaces", "they would be two classes")
    rows = _manifest_rows()
    rows[2]["path"] = "imgs\\a\\2.png"
    with pytest.raises(DatasetError) as err:
        folder.from_manifest(_manifest(tmp_path, rows), tmp_path / "windows", size=8)
    one_line(err, "line 4", "write '/' between folders, not '\\'")
    assert not (tmp_path / "cased").exists() and not (tmp_path / "windows").exists()


def test_mhist_extraction_cut_short_points_at_the_zip(tmp_path):
    """images.zip placed, and images/ extracted from it only in part (an unzip interrupted): images/ is read
    first, so the run used to stop at the first absent image as if the label file were wrong."""
    from test_data_manual import mhist_fixture

    root = tmp_path / "mhist"
    mhist_fixture(root, as_zip=True)
    extracted = root / "images"
    extracted.mkdir()
    for image in sorted((root / "staging" / "images").iterdir())[:9]:
        (extracted / image.name).write_bytes(image.read_bytes())
    with pytest.raises(DatasetError) as err:
        manual.convert_mhist(root, tmp_path / "out", size=16)
    one_line(err, str(extracted), "17 of the 26 images annotations.csv lists are not there", "'MHIST_009.png'",
             "extraction cut short", f"Remove {extracted}/ to read images.zip itself")
    shutil.rmtree(extracted)  # as it says
    manual.convert_mhist(root, tmp_path / "out", size=16)
