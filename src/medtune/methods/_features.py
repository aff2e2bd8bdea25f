"""Small tensor helpers shared by the methods that keep training features in their head
(kNN, SimpleShot, Tip-Adapter). Not a method: it declares no SPEC, and its name starts
with ``_`` so the registry does not read it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

# elements of one (rows x training samples) block: 16 M floats, 64 MB, whatever the sizes
BLOCK_ELEMENTS = 2**24


def tensor(array) -> torch.Tensor:
    """float32 tensor of its own (cached features are read-only memory maps)."""
    return torch.tensor(np.asarray(array), dtype=torch.float32)


def labels_tensor(labels) -> torch.Tensor:
    return torch.tensor(np.asarray(labels), dtype=torch.int64)


def centre_normalise(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """SimpleShot's CL2N: subtract the training mean, then scale to unit length."""
    return F.normalize(features - mean, dim=-1)


def row_blocks(n_rows: int, n_cols: int, budget: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Slices of the rows such that a block of ``rows x n_cols`` stays within ``budget`` elements,
    so a head comparing every test image with every training image never holds the whole matrix."""
    step = max(1, budget // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
