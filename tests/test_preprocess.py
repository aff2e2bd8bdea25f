"""The batched tensor preprocessing gives what open_clip's PIL eval transform gives."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from medtune.preprocess import normalize, resize_crop, to_device_batch

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's


def test_normalize_is_the_per_channel_standardisation():
    x = torch.rand(4, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    expected = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, MEAN, STD), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 3, 9, 7), (1, 3, 1, 1), (5, 3, 33, 17), (256, 3, 64, 64)])
def test_normalize_over_the_batch_itself_gives_the_same_values(shape, dtype):
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(sum(shape)))
    expected = normalize(x, MEAN, STD)
    got = x.clone()
    assert normalize(got, MEAN, STD, overwrite=True) is got
    assert torch.equal(got, expected)  # the same kernel: bit for bit, not merely close
    torch.testing.assert_close(got, (x - torch.tensor(MEAN, dtype=dtype).view(3, 1, 1)) / torch.tensor(STD, dtype=dtype).view(3, 1, 1),
                               atol=1e-6, rtol=0)


def test_normalize_overwrites_only_a_contiguous_batch():
    x = torch.rand(2, 3, 8, 8).permute(0, 1, 3, 2)
    with pytest.raises(ValueError, match="contiguous CPU batch"):
        normalize(x, MEAN, STD, overwrite=True)


def test_store_batch_matches_open_clip_eval_transform_at_the_model_size():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    transform = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    expected = torch.stack([transform(Image.fromarray(image)) for image in images])
    got = normalize(resize_crop(to_device_batch(images, "cpu"), 32), MEAN, STD)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
