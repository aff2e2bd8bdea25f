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
import torch.nn.functional as F
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


def normalize(x: torch.Tensor, mean, std, overwrite: bool = False) -> torch.Tensor:
    """(x - mean) / std per channel of an N x C x H x W batch; it runs once per condition per batch.

    Batch norm in inference mode with zero mean, unit variance, weight 1 / std and bias
    -mean / std is exactly this per-channel affine map, and its kernel runs it in about
    half the time of a broadcast multiply-add on a CPU (2.7 vs 4.9 ms at 256 x 3 x 64 x 64).
    ``overwrite`` (a contiguous CPU batch the caller owns) writes the result over ``x``: the same
    kernel and values, 3x faster again (0.67 vs 1.95 ms), as the lines it reads are the lines it writes.
    """
    scale = 1 / torch.tensor(std, dtype=x.dtype, device=x.device)
    shift = -torch.tensor(mean, dtype=x.dtype, device=x.device) * scale
    mean0, var1 = torch.zeros_like(scale), torch.ones_like(scale)
    if overwrite:
        if x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError(f"normalize overwrites only a contiguous CPU batch, not {x.device.type} strides {x.stride()}")
        unused = torch.empty(0, dtype=x.dtype)
        torch.ops.aten.native_batch_norm.out(x, scale, shift, mean0, var1, False, 0.0, 0.0, out=x, save_mean=unused, save_invstd=unused)
        return x
    return F.batch_norm(x, mean0, var1, scale, shift, training=False, eps=0.0)
