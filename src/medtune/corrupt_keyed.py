"""The random elements of the ``medmnistc`` suite, drawn per image key: motion-blur angles, HED
stain draws, and the ink marks and bubbles (drawn as MedMNIST-C draws them, rasterised on the device).

Each key seeds its own numpy stream per corruption, so an image gets the same draws in any batch
and on any device; one draw serves all five levels of a corruption (a level grows the same marks,
bubbles and stain shift). Shapes are rasterised in small windows around them, not over the whole
image, as markup's strokes are (``corrupt.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from medtune.conditions import MEDMNISTC_SEVERITIES

SIDE = 224  # MedMNIST+'s images, on which MedMNIST-C's lengths in pixels are defined
_SALT = 20240628  # keeps these streams apart from markup's and from any other use of the keys
_STREAMS = {"motion_blur": 1, "stain_deposit": 2, "bubble": 3, "hed_shift": 4}
INK_SIDE = {1: 24, 2: 24, 3: 24, 4: 24, 5: 32}  # MedMNIST-C's ink masks: inks['3'] below level 5, inks['4'] at it
INK_MARGIN = 10
BUBBLE_MIN_RADIUS, BUBBLE_MIN_COUNT, BUBBLE_BORDER = 3, 7, 2
BUBBLE_ALPHA, RING_ALPHA = 100 / 255, 130 / 255
MAX_BUBBLES = max(count for _, count in MEDMNISTC_SEVERITIES["bubble"])
MAX_MARKS = max(MEDMNISTC_SEVERITIES["stain_deposit"])
_BLOB_HARMONICS = 4


@functools.lru_cache(maxsize=16384)  # a batch's keys come back once per level
def _draws(stream: str, key: int) -> np.ndarray:
    """The uniform (or normal) draws of one key for one corruption, shared by its five levels."""
    rng = np.random.default_rng([_SALT, _STREAMS[stream], key])
    if stream == "motion_blur":
        return rng.uniform(-45.0, 45.0, size=1)
    if stream == "hed_shift":
        return rng.standard_normal(6)
    if stream == "stain_deposit":  # count, then per mark: position (2), radius, harmonics' amplitudes and phases
        return rng.random(1 + MAX_MARKS * (3 + 2 * _BLOB_HARMONICS))
    return rng.random(1 + 3 * MAX_BUBBLES)  # bubble: count, then per bubble: radius, x, y


def motion_angles(keys: Sequence[int]) -> np.ndarray:
    """Each image's motion-blur angle in degrees, uniform in [-45, 45]."""
    return np.array([_draws("motion_blur", k)[0] for k in keys])


def _uniform_int(u: np.ndarray, low, high) -> np.ndarray:
    """randint(low, high) inclusive, from uniforms in [0, 1)."""
    return low + np.floor(u * (np.asarray(high) - low + 1)).astype(np.int64)


def _window(centres: torch.Tensor, reach: float, image: torch.Tensor, height: int, width: int):
    """The pixels around each shape (centres: shapes x 2 as (x, y), in pixels, ``shapes`` any shape;
    ``image``: each shape's image in the batch): each window column's and row's offset from its shape's
    centre (n x shapes each), and each window pixel's index in a canvas (n x n x shapes,
    :func:`canvas_index`). The shapes run last: see :func:`canvas_index`."""
    size = 2 * math.ceil(reach) + 2
    cx, cy = centres.movedim(-1, 0).contiguous()  # shapes each, contiguous: see canvas_index
    steps = torch.arange(size, dtype=centres.dtype, device=centres.device).view(-1, *[1] * cx.dim())
    px, py = torch.floor(cx - reach - 0.5) + steps, torch.floor(cy - reach - 0.5) + steps  # size x shapes
    dx, dy = px + 0.5 - cx, py + 0.5 - cy
    return dx, dy, canvas_index(px, py, image, height, width)


def canvas_index(px: torch.Tensor, py: torch.Tensor, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """n x n x shapes: the index of each pixel of windows of columns ``px`` and rows ``py`` (n x shapes
    each; ``image``: each shape's image in the batch) in a canvas of B x (height + 1) x (width + 1)
    whose last row and column take the pixels outside the image (no mask over the windows: the rows and
    columns are sent there before they meet).

    Windows are laid out pixel by pixel, each pixel over all the shapes: an elementwise op over them
    runs along thousands of shapes, not along a window row of a few pixels (torch's CPU loops are
    vectorised along the last dimensions they can merge, and only when those are long: 2-4x faster).
    So what meets the windows per shape should be a contiguous tensor of shapes, not a strided view."""
    col = torch.where((px >= 0) & (px < width), px, width).long()
    row = torch.where((py >= 0) & (py < height), py, height).long()
    # the image's offset goes into the rows too: one pass over the n x n x shapes indices
    return ((row + image * (height + 1)) * (width + 1))[:, None] + col[None, :]


def paint(
    values: torch.Tensor, index: torch.Tensor, batch: int, height: int, width: int, reduce: str = "amax", empty=0
) -> torch.Tensor:
    """B x H x W (a view of the canvas): each pixel's largest (``reduce="amin"``: smallest) value that any
    window pixel (``values`` at ``index`` from :func:`canvas_index`) leaves on it, ``empty`` where none does."""
    canvas = torch.full((batch * (height + 1) * (width + 1),), empty, dtype=values.dtype, device=values.device)
    canvas.scatter_reduce_(0, index.reshape(-1), values.reshape(-1), reduce=reduce)
    return canvas.view(batch, height + 1, width + 1)[:, :height, :width]


def stain_counts(keys: Sequence[int]) -> np.ndarray:
    """B x 5: each image's number of ink marks at levels 1..5, ``random.randint(1, level)``."""
    u = np.array([_draws("stain_deposit", k)[0] for k in keys])
    return np.stack([_uniform_int(u, 1, level) for level in INK_SIDE], axis=1)


def stain_marks(keys: Sequence[int], side: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Each image's ink marks of a given side in pixels of a (height x width) image at scale 1: top-left
    corners (B x marks x 2, as (x, y)) at least 10 px in, and each blob's radius and harmonics."""
    u = np.stack([_draws("stain_deposit", k) for k in keys])
    marks = u[:, 1:].reshape(len(keys), MAX_MARKS, -1)
    high = np.array([width, height]) - side - INK_MARGIN
    return {
        "corner": _uniform_int(marks[..., 0:2], INK_MARGIN, np.maximum(high, INK_MARGIN)),  # random.randint(10, w - side - 10)
        "radius": 0.42 + 0.06 * marks[..., 2],
        "amplitude": 0.16 * marks[..., 3 : 3 + _BLOB_HARMONICS] / np.arange(1, _BLOB_HARMONICS + 1),
        "phase": 2 * np.pi * marks[..., 3 + _BLOB_HARMONICS :],
    }


def stain_masks(keys: Sequence[int], levels: Sequence[int], size, scale: float, device) -> dict[int, torch.Tensor]:
    """B x 1 x H x W per level: the inked pixels (``x *= 1 - ink``: black) of each image's first ``count``
    marks; a blob is star-shaped, radius r (1 + sum_k a_k cos(k phi + p_k)) of its box. Levels with the
    same ink size share the blobs."""
    height, width = size
    counts = torch.tensor(stain_counts(keys), device=device)
    masks = {}
    for side_ref in sorted({INK_SIDE[lv] for lv in levels}):
        marks = stain_marks(keys, side_ref, round(height / scale), round(width / scale))
        side = side_ref * scale
        corner = torch.tensor(marks["corner"], dtype=torch.float32, device=device) * scale
        image = torch.arange(len(keys), device=device)[:, None]
        dx, dy, flat = _window(corner + side / 2, side / 2, image, height, width)  # n x B x marks, n x n x B x marks
        # the blobs' trigonometry runs B x marks x n x n, as it always has: torch's atan2 and cos round
        # differently along other layouts (a vectorised loop or not), and the marks must not change
        dx, dy = dx.permute(1, 2, 0).contiguous(), dy.permute(1, 2, 0).contiguous()
        flat = flat.permute(2, 3, 0, 1).contiguous()  # once, not each level's blobs
        box = (*dx.shape, dx.shape[-1])
        dx, dy = dx[..., None, :].expand(box), dy[..., :, None].expand(box)
        phi = torch.atan2(dy, dx)
        orders = torch.arange(2, 2 + _BLOB_HARMONICS, dtype=torch.float32, device=device)
        amplitude, phase = (torch.tensor(marks[k], dtype=torch.float32, device=device) for k in ("amplitude", "phase"))
        wobble = (amplitude[..., None, None, :] * torch.cos(phi[..., None] * orders + phase[..., None, None, :])).sum(-1)
        radius = torch.tensor(marks["radius"], dtype=torch.float32, device=device)[..., None, None] * (1 + wobble)
        blob = (torch.hypot(dx, dy) <= radius * side) & (dx.abs() <= side / 2) & (dy.abs() <= side / 2)
        for level in (lv for lv in levels if INK_SIDE[lv] == side_ref):
            counted = torch.arange(MAX_MARKS, device=device)[None] < counts[:, level - 1, None]
            masks[level] = paint((blob & counted[..., None, None]).to(torch.uint8), flat, len(keys), height, width).bool()[:, None]
    return masks


def bubbles(keys: Sequence[int], max_radius: int, max_count: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Each image's bubbles in pixels of a (height x width) image at scale 1, drawn as MedMNIST-C draws
    them: count randint(7, n), radius randint(3, r), centre randint(radius, side - radius) per axis."""
    u = np.stack([_draws("bubble", k) for k in keys])
    per = u[:, 1:].reshape(len(keys), MAX_BUBBLES, 3)
    radius = _uniform_int(per[..., 0], BUBBLE_MIN_RADIUS, max_radius)
    centre = _uniform_int(per[..., 1:], radius[..., None], np.array([width, height]) - radius[..., None])
    return {"count": _uniform_int(u[:, 0], BUBBLE_MIN_COUNT, max_count), "radius": radius, "centre": centre}


def bubble_codes(keys: Sequence[int], max_radius: int, max_count: int, size, scale: float, device) -> torch.Tensor:
    """B x H x W uint8: 2k + 1 inside the disc of an image's k-th bubble (k from 1), 2k on its ring, 0 where
    no bubble is. Where bubbles overlap, the later one's (the larger) code wins, as in MedMNIST-C's layer.

    PIL's ``ellipse`` fills the pixels of a (2r + 1)-pixel box around integer centre c: here, pixel
    centres within r + 1/2 of c + 1/2."""
    height, width = size
    drawn = bubbles(keys, max_radius, max_count, round(height / scale), round(width / scale))
    batch, most = len(keys), MAX_BUBBLES
    # only the bubbles each image draws (7..n of n slots): one list of S bubbles over the batch
    counted = torch.arange(most, device=device)[None] < torch.tensor(drawn["count"], device=device)[:, None]
    centre = (torch.tensor(drawn["centre"], dtype=torch.float32, device=device)[counted] + 0.5) * scale  # S x 2
    inner = (torch.tensor(drawn["radius"], dtype=torch.float32, device=device)[counted] + 0.5) * scale
    outer = inner + BUBBLE_BORDER * scale
    image = torch.arange(batch, device=device)[:, None].expand(batch, most)[counted]
    order = (2 * torch.arange(1, most + 1, device=device, dtype=torch.uint8)).expand(batch, most)[counted]
    dx, dy, flat = _window(centre, float(outer.max()), image, height, width)  # n x S, n x n x S
    d2 = dx[None] ** 2 + dy[:, None] ** 2
    # a pixel in the disc is in the ring's outer circle too: code 2k there, plus one in the disc
    # (comparisons give bools, whose bytes are 0/1: read as uint8, no conversion pass)
    codes = torch.le(d2, outer**2).view(torch.uint8).mul_(order).add_(torch.le(d2, inner**2).view(torch.uint8))
    return paint(codes, flat, batch, height, width)


@functools.lru_cache(maxsize=8)
def bubble_opacity(dtype: torch.dtype) -> torch.Tensor:
    """256: the bubble layer's opacity for each code of :func:`bubble_codes`, 100/255 in a disc (odd codes),
    130/255 on a ring (even), 0 for no bubble; in float32 as the layer's arithmetic, then in ``dtype``."""
    code = torch.arange(256).to(torch.uint8)
    return (code & 1).float().mul_(BUBBLE_ALPHA - RING_ALPHA).add_(RING_ALPHA).mul_(code > 0).to(dtype)


def hed_draws(keys: Sequence[int]) -> torch.Tensor:
    """B x 6 standard normals: z for alpha of H, E, D, then z' for beta."""
    return torch.tensor(np.stack([_draws("hed_shift", k) for k in keys]))
