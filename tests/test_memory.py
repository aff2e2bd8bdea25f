"""Memory estimates (medtune.memory): the meta-device count against a hand-worked case, the one line a
job states at its start, and the one line an out-of-GPU-memory error ends with (a fake OOM raised by a
patched forward: no GPU here)."""

import numpy as np
import pytest
import torch
from torch import nn

from medtune import jobs, memory
from medtune.models import Backbone, load_backbone


class TwoLayers(nn.Module):
    """encode_image = fc2(relu(fc1(flatten(x)))) on 3 x 4 x 4 images."""

    def __init__(self, hidden=100, out=5):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(48, hidden), nn.Linear(hidden, out)

    def encode_image(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_the_estimate_counts_what_the_forward_holds():
    """By hand, per image in float32: the input (48), fc1's output (100) alive while relu makes its own (100),
    then fc2's output (5) while relu's is alive: peak 48 + 100 + 100 = 248 values = 992 bytes; weights
    (48*100 + 100 + 100*5 + 5) * 4 bytes; training adds a gradient and two Adam moments per parameter."""
    backbone = Backbone("two", TwoLayers(), None, 4, (0,) * 3, (1,) * 3)
    found = memory.estimate(backbone, 32)
    assert found.per_image_bytes == 992 and found.fixed_bytes == 0
    assert found.weight_bytes == (48 * 100 + 100 + 100 * 5 + 5) * 4
    assert found.peak_bytes() == found.weight_bytes + 32 * 992
    trained = memory.estimate(backbone, 32, training=True)
    assert trained.weight_bytes == 4 * found.weight_bytes
    # autograd keeps relu's output and the input for the backward: the same peak, now held to the end
    assert trained.per_image_bytes == 992
    assert memory.estimate(backbone, 32, half_activations=True).per_image_bytes == 496


def test_the_batch_that_fits_is_the_largest_power_of_two_within_the_budget():
    found = memory.MemoryEstimate("b", 256, False, True, weight_bytes=2**30, fixed_bytes=0, per_image_bytes=100 * 2**20)
    # 0.85 x 4 GB = 3.4 GB: 1 GB of weights leaves room for 24.6 images of 100 MB
    assert found.batch_that_fits(4 * 2**30) == 16
    assert found.batch_that_fits(2**30) == 0
    assert found.batch_that_fits(1000 * 2**30) == 256  # never more than the job asked for


def test_a_full_size_model_is_estimated_without_memory():
    """Virchow2 (632M parameters) on the meta device: weights counted exactly, activations per image positive."""
    from medtune.backbones import timm as family

    with torch.device("meta"):
        model = family.TimmEncoder(family.create({"model": "virchow2"}), "cls+mean")
    found = memory.estimate(Backbone("virchow2", model, None, 224, (0,) * 3, (1,) * 3), 256, half_activations=True)
    assert found.weight_bytes == 631239424 * 4
    # at least one block's 261 tokens x 6832 SwiGLU hidden units in fp16, per image
    assert found.per_image_bytes >= 261 * 6832 * 2


def test_an_encoding_job_states_its_estimate(capsys):
    backbone = load_backbone("tiny-vit", {"family": "timm", "model": "medtune-tiny-vit"})
    found = memory.announce(backbone, 64, "cpu")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("medtune:")]
    assert lines == [f"medtune: {found.line()}"]
    assert lines[0].startswith("medtune: estimated peak memory of backbone tiny-vit at batch size 64 (encoding, fp32): ")
    assert memory.announced() is found


class FakeEncodeJob:
    rule = "encode_images"
    log: list = []
    threads = 1

    class wildcards:  # noqa: N801  (mimics snakemake.wildcards)
        backbone = "uni2-h"

    class params:  # noqa: N801
        spec = {"family": "timm", "model": "medtune-tiny-vit", "encode_batch_size": 256}


def test_running_out_of_gpu_memory_mid_encode_names_the_backbone_and_a_batch_size_that_fits(capfd, monkeypatch, tmp_path):
    """A patched forward raises CUDA's OutOfMemoryError after the job stated its estimate; the job ends with one
    line on stderr naming the backbone key and the batch size its estimate fits on this (pretended) 16 GB GPU."""
    from medtune import encode

    backbone = load_backbone("uni2-h", FakeEncodeJob.params.spec)

    def out_of_memory(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    estimate = memory.MemoryEstimate("uni2-h", 256, False, True, weight_bytes=3 * 2**30, fixed_bytes=0, per_image_bytes=200 * 2**20)
    monkeypatch.setattr(memory, "estimate", lambda *args, **kwargs: estimate)
    monkeypatch.setattr(memory, "gpu_bytes", lambda: 16 * 2**30)
    monkeypatch.setattr(encode, "load_backbone", lambda *args, **kwargs: backbone, raising=False)
    monkeypatch.setattr(backbone.model, "encode_image", out_of_memory)

    def main(smk):
        memory.announce(backbone, 256, "cpu")
        encode.encode_images(backbone, np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), progress=False)

    with pytest.raises(SystemExit):
        jobs.run(main, FakeEncodeJob())
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("medtune error:")]
    # 0.85 x 16 GB - 3 GB leaves 10.6 GB: 54 images of 200 MB, so 32
    assert errors == [
        "medtune error: out of GPU memory in rule encode_images at batch size 256; lower backbones.uni2-h.encode_batch_size (now 256): "
        "backbone uni2-h at batch size 256 needs about 53.00 GB (estimate); the GPU has 16.00 GB; batch size 32 fits (about 9.25 GB)"
    ]


def test_without_an_estimate_or_a_gpu_to_ask_the_message_is_the_setting_alone(monkeypatch):
    setting = "out of GPU memory in rule encode_images at batch size 256; lower backbones.uni2-h.encode_batch_size (now 256)"
    monkeypatch.setattr(memory, "_announced", None)
    assert jobs.oom_message(FakeEncodeJob()) == setting
    monkeypatch.setattr(memory, "_announced", memory.MemoryEstimate("uni2-h", 256, False, True, 2**30, 0, 2**20))
    monkeypatch.setattr(memory, "gpu_bytes", lambda: torch.cuda.get_device_properties(99).total_memory)  # no such device here
    assert jobs.oom_message(FakeEncodeJob()) == setting


def test_a_job_starts_with_no_estimate_of_an_earlier_one(monkeypatch):
    monkeypatch.setattr(memory, "_announced", memory.MemoryEstimate("old", 8, False, False, 1, 0, 1))
    seen = []
    jobs.run(lambda smk: seen.append(memory.announced()), FakeEncodeJob())
    assert seen == [None]


def test_a_model_the_meta_device_cannot_run_is_said_and_the_job_goes_on(capsys):
    class DataDependent(TwoLayers):
        def encode_image(self, x):
            return super().encode_image(x)[: int(x.sum().item()) + 1]  # a value, which the meta device has not

    assert memory.announce(Backbone("odd", DataDependent(), None, 4, (0,) * 3, (1,) * 3), 8, "cpu") is None
    assert "medtune: no memory estimate for backbone odd" in capsys.readouterr().out
    assert memory.announced() is None


def test_the_preset_table_has_a_row_per_published_model(monkeypatch):
    """``python -m medtune.memory``: here for the torchvision family alone (ResNet-50: 23,508,032 weights without its classifier)."""
    from medtune import backbones

    only = {"torchvision": backbones.registered()["torchvision"]}
    monkeypatch.setattr(backbones, "registered", lambda: only)
    rows = memory.preset_table(8).splitlines()
    assert len(rows) == 3 and rows[2].startswith(f"| torchvision | resnet50-imagenet | {23508032 * 4 / 2**30:.2f} |")
