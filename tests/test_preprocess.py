"""The batched tensor preprocessing gives what open_clip's PIL eval transform gives."""

import numpy as np
import open_clip
import torch
from PIL import Image

from medtune.preprocess import normalize, resize_crop, to_device_batch

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's


def test_normalize_is_the_per_channel_standardisation():
    x = torch.rand(4, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    expected = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, MEAN, STD), expected, atol=1e-6, rtol=0)


def test_store_batch_matches_open_clip_eval_transform_at_the_model_size():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    transform = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    expected = torch.stack([transform(Image.fromarray(image)) for image in images])
    got = normalize(resize_crop(to_device_batch(images, "cpu"), 32), MEAN, STD)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
