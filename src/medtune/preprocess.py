"""Tensor preprocessing on the compute device, replacing open_clip's PIL transforms.

open_clip's eval transform is: resize the shorter side to the model's input size
(bicubic), centre-crop, scale to [0, 1], normalise by mean/std. Doing the same on
batched uint8 tensors keeps per-image PIL work off the hot path, and lets the
corruptions run between resizing and normalisation — at the model's input
resolution, as the robustness benchmark prescribes.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


def to_device_batch(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 N x H x W x 3 (numpy, possibly memory-mapped) -> uint8 N x 3 x H x W on device."""
    batch = torch.from_numpy(np.ascontiguousarray(images))
    return batch.to(device, non_blocking=True).permute(0, 3, 1, 2)


def resize_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float N x 3 x H x W -> float in [0, 1] at size x size."""
    x = batch.float() / 255 if batch.dtype == torch.uint8 else batch
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [size, size])
    # the uint8 batch arrives channels-last (a permuted view); one copy here instead of
    # one per corruption and per condition downstream
    return x.clamp_(0, 1).contiguous()


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, as one fused multiply-add: it runs once per condition per batch."""
    scale = 1 / torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    shift = -torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1) * scale
    return torch.addcmul(shift, x, scale)
