"""encode_images: every condition's features are the model's on that condition's batch, one at a time."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from medtune import corrupt_medmnistc
from medtune.bench.inputs import make_backbone, make_data
from medtune.conditions import ALL_CONDITIONS
from medtune.corrupt import apply
from medtune.encode import encode_images
from medtune.preprocess import resize_crop, to_device_batch


@pytest.fixture(scope="module")
def tiny():
    backbone = make_backbone("medtune-tiny", image_size=32)
    images, samples = make_data(n_train=0, n_val=0, n_test=7, image_size=40)
    return backbone, images, np.array(samples["index"])


@pytest.mark.parametrize("threads", [1, 2])
def test_encode_images_gives_each_conditions_own_features(tiny, threads):
    """Against a loop of :func:`apply` + torchvision's normalisation + the model, batch by batch: the in-place
    normalisation, the levels made together and the JPEG thread (or not) change no feature."""
    backbone, images, indices = tiny
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = encode_images(backbone, images, indices, ALL_CONDITIONS, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(previous)
    expected = {c: [] for c in ALL_CONDITIONS}
    with torch.inference_mode():
        for start in range(0, len(indices), 4):
            idx = indices[start : start + 4]
            x = resize_crop(to_device_batch(images[idx], "cpu"), backbone.image_size)
            for condition in ALL_CONDITIONS:
                model_input = TF.normalize(apply(x, condition, keys=idx), list(backbone.mean), list(backbone.std))
                expected[condition].append(F.normalize(backbone.model.encode_image(model_input), dim=-1))
    for condition in ALL_CONDITIONS:
        assert got[condition].shape == (len(indices), backbone.model.visual.output_dim)
        np.testing.assert_allclose(got[condition], torch.cat(expected[condition]).numpy(), atol=2e-6, rtol=0, err_msg=condition)


def test_jpeg_runs_beside_the_caller_only_where_torch_leaves_it_a_core():
    x = torch.rand(2, 3, 8, 8)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert corrupt_medmnistc._jpeg_beside(x)
        torch.set_num_threads(2)
        assert not corrupt_medmnistc._jpeg_beside(x)
    finally:
        torch.set_num_threads(previous)
