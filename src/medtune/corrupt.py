"""Image corruptions for the robustness benchmarks: PathCLIP's here, MedMNIST-C's in ``corrupt_medmnistc.py``.

:func:`apply` and :func:`apply_many` take any condition of any suite
(:mod:`medtune.conditions`); the rest of this module is the ``pathclip`` suite.

PathCLIP reports zero-shot accuracy and retrieval under 7 corruptions at 4
severities each, plus the clean images: 29 conditions, named
``{corruption}-{severity}`` (``brightness--2``, ``blur-3``, ``clean``). The paper
describes the corruptions only in words, so the numbers below are this
repository's reading of it, fixed here so every run corrupts the same way:

* brightness, contrast, saturation: levels -2, -1, 1, 2 are the torchvision
  factors 0.4, 0.8, 1.2, 1.6.
* hue: the paper gives the same "factors", but torchvision's ``adjust_hue``
  takes a shift in turns of the colour wheel, in [-0.5, 0.5]. We use
  shift = (factor - 1) / 4, i.e. -0.15, -0.05, +0.05, +0.15 of a turn
  (-54, -18, +18, +54 degrees), so factor 1 is no change as for the others.
* blur: levels 1..4 are Gaussian sigma 1..4 px, kernel 2*ceil(3*sigma)+1,
  cut to the largest odd size that fits the image.
* resolution: levels 1..4 shrink each side by 20, 40, 60, 80 % (antialiased),
  then scale back to the input size (bilinear), losing detail not size.
* markup: levels 1..4 draw that many pen strokes, smooth quadratic Bezier
  curves 2 % of the shorter side wide, in one ink per image (green, blue or
  black, 85 % opaque). Strokes are drawn from a random stream seeded by a
  per-image key (e.g. the dataset index), so an image gets the same strokes in
  any batch, and markup-n strokes are the first n of markup-(n+1).

Every function takes a batch B x 3 x H x W, uint8 or float in [0, 1], and
returns the same shape, dtype, device and value range; a no-op setting (factor
1, ``clean``) returns the input tensor itself, untouched.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from medtune.conditions import (  # noqa: F401  (re-exported: the corruption's parameters)
    ALL_CONDITIONS,
    BLUR_SIGMAS,
    COLOUR_FACTORS,
    CONDITIONS,
    CORRUPTIONS,
    HUE_SHIFTS,
    MARKUP_STROKES,
    MEDMNISTC_SEVERITIES,
    PARAMETERS,
    RESOLUTION_SCALES,
    AUGMENTED,
    SEVERITY_LABEL,
    SUITES,
    augmentation_for,
    augmentation_pool,
    parse_condition,
)
from medtune.corrupt_keyed import canvas_index, paint
from medtune.corrupt_medmnistc import Batch as _MedmnistcBatch
from medtune.corrupt_medmnistc import chunks

# Ink colours in RGB [0, 1]: the marker pens pathologists circle regions with.
INKS = ((0.10, 0.55, 0.25), (0.10, 0.20, 0.70), (0.08, 0.08, 0.10))
INK_OPACITY = 0.85
STROKE_WIDTH = 0.02  # of the shorter image side
MAX_STROKES = max(MARKUP_STROKES.values())
_BEZIER_SEGMENTS = 16  # chords per stroke; finer is invisible at 2 % width
_MARKUP_SALT = 20240517  # keeps markup streams apart from any other use of the same keys


def apply(images: torch.Tensor, condition: str, keys: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Corrupt a batch by condition name; ``keys`` seed the random elements per image (default ``arange(B)``).

    ``augmented`` (``augmented-{suite}``) gives each image the corruption of PathCLIP's suite
    (of that suite) that :func:`augmentation_for` picks by its key.
    """
    return _Batch(images, keys).apply(condition)


def apply_many(
    images: torch.Tensor, conditions: Sequence[str], keys: torch.Tensor | Sequence[int] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(condition, corrupted batch)`` for each condition in turn, each as :func:`apply` gives it.

    The levels of one corruption share their common work on the batch: hue's HSV
    decomposition is made once, and each markup stroke is rasterised once (level n's
    strokes are the first n of level n + 1). A batch is corrupted under every
    condition of a study in evaluation, so this is the hot path.

    Every batch it yields, except ``images`` itself (a no-op condition), is new and held nowhere
    else: the caller may overwrite it (``encode_images`` normalises it in place).
    """
    conditions = list(conditions)
    batch = _Batch(images, keys, conditions)
    for condition in conditions:
        yield condition, batch.apply(condition)


class _Batch:
    """One batch under any number of conditions, keeping what several levels need."""

    def __init__(self, images: torch.Tensor, keys: torch.Tensor | Sequence[int] | None, conditions: Sequence[str] = ()) -> None:
        _check(images)
        # contiguous once here: several corruptions read a batch as flat runs of elements, and a
        # caller's images may come permuted (HWC to CHW) or sliced
        self.images, self.keys = images.contiguous(), keys
        # what a no-op hands back: the caller's tensor itself, never the contiguous copy the
        # corruptions read (a caller may overwrite every other batch, and a copy would be one)
        self.given = images
        self.conditions = conditions  # what is coming: the medmnistc levels that share work are made together
        self._hue_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._grey: torch.Tensor | None = None
        self._strokes: _Strokes | None = None
        self._medmnistc: _MedmnistcBatch | None = None
        if any(augmentation_pool(c) is None and parse_condition(c)[0] in MEDMNISTC_SEVERITIES for c in conditions):
            self._medmnistc_batch()  # now: its JPEG starts in the background

    def apply(self, condition: str) -> torch.Tensor:
        pool = augmentation_pool(condition)
        if pool is not None:
            return augment(self.images, self.keys, pool)
        corruption, level = parse_condition(condition)
        if corruption == "clean":
            return self.given
        if corruption in MEDMNISTC_SEVERITIES:
            return self._medmnistc_batch(condition).apply(corruption, level)
        param = PARAMETERS[corruption][level]
        if corruption == "hue":
            return self.hue(param)
        if corruption == "markup":
            return self.markup(int(param))
        if corruption == "saturation":
            return self.saturation(param)
        return _FUNCTIONS[corruption](self.images, param)

    def _medmnistc_batch(self, condition: str | None = None) -> _MedmnistcBatch:
        if self._medmnistc is None:
            wanted: dict[str, set[int]] = {}
            for name in [*self.conditions, *([condition] if condition else [])]:
                if augmentation_pool(name) is None and (parsed := parse_condition(name))[0] in MEDMNISTC_SEVERITIES:
                    wanted.setdefault(parsed[0], set()).add(parsed[1])
            self._medmnistc = _MedmnistcBatch(self.images, _keys(self.keys, len(self.images)), wanted)
        return self._medmnistc

    def saturation(self, factor: float) -> torch.Tensor:
        """torchvision's ``adjust_saturation``, to the bit: a blend with each pixel's grey level, the grey
        made once for every level and the blend slice by slice (1.5x faster than torchvision's)."""
        if factor < 0:
            raise ValueError(f"saturation factor {factor} is negative")
        if factor == 1:
            return self.given
        if self._grey is None:
            self._grey = _grey(self.images)
        return _blend(self.images, self._grey, factor)

    def hue(self, factor: float) -> torch.Tensor:
        shift = (factor - 1) / 4
        if not -0.5 <= shift <= 0.5:
            raise ValueError(f"hue factor {factor} is outside [-1, 3], a shift beyond half a turn")
        if shift == 0:
            return self.given
        if self._hue_parts is None:
            self._hue_parts = _hue_parts(self.images)
        return _hue_rotate(self.images, self._hue_parts, shift)

    def markup(self, strokes: int) -> torch.Tensor:
        if not 0 <= strokes <= MAX_STROKES:
            raise ValueError(f"markup takes 0..{MAX_STROKES} strokes, got {strokes}")
        if strokes == 0:
            return self.given
        if self._strokes is None:
            self._strokes = _Strokes(self.images, self.keys)
        return self._strokes.draw(self.images, strokes)


def augment(
    images: torch.Tensor, keys: torch.Tensor | Sequence[int] | None = None, pool: tuple[str, ...] | None = None
) -> torch.Tensor:
    """Each image under the condition of ``pool`` (default: PathCLIP's 28) its key picks."""
    keys = torch.arange(len(images)) if keys is None else torch.as_tensor(keys)
    out = images.clone()
    picked = [augmentation_for(k, pool) for k in keys.tolist()]
    for condition in sorted(set(picked)):
        rows = torch.tensor([i for i, c in enumerate(picked) if c == condition], device=images.device)
        out[rows] = apply(images[rows], condition, keys[rows.cpu()])
    return out


def brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    _check(images)
    return images if factor == 1 else TF.adjust_brightness(images, factor)


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    _check(images)
    return images if factor == 1 else TF.adjust_contrast(images, factor)


def saturation(images: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_saturation``, to the bit (see :meth:`_Batch.saturation`)."""
    return _Batch(images, None).saturation(factor)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W grey levels as torchvision's colour adjustments make them (its ITU-R 601 weights;
    uint8 images floored), in float."""
    r, g, b = images.unbind(dim=-3)
    grey = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)
    return grey if images.is_floating_point() else grey.floor_()


def _blend(images: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's blend, ``x * factor + other * (1 - factor)`` clamped to the value range (uint8
    truncated), with its ops in its order, made slice by slice of the batch (its three passes in a
    core's cache, as corrupt_medmnistc's). Checked byte for byte at 1-4 threads: torchvision's contrast,
    whose ``other`` is one grey level per image, is not always the same made so on several threads,
    and is left to torchvision."""
    out = torch.empty_like(images)
    floating = images.is_floating_point()
    for rows in chunks(images):
        y = torch.mul(images[rows], factor, out=out[rows]) if floating else images[rows].mul(factor)
        y.add_(other[rows], alpha=1.0 - factor).clamp_(0, 1.0 if floating else 255.0)
        if not floating:
            out[rows] = y  # to uint8 as torchvision's .to(): truncated
    return out


def hue(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Hue "factor" as the paper gives it; shifted by (factor - 1) / 4 of a turn.

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV, shift, back), computed
    in RGB: a hue shift keeps each pixel's largest and smallest channel, so only the
    hue angle is needed, with elementwise ops instead of a channel reduction and a gather.
    """
    return _Batch(images, None).hue(factor)


def _hue_parts(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pixel's largest channel, chroma (largest - smallest) and hue in sixths of a turn (B x H x W).

    The hue comes with HSV's tie rule (red wins, then green) and its sextant's offset
    (red 0, green 2, blue 4) added, so a shift is one more addition. The choice by
    largest channel is made with 0/1 masks and multiply-adds, exact because the masks
    exclude each other, and several times faster than ``torch.where`` on a CPU.
    """
    dtype = images.dtype if images.is_floating_point() else torch.float32
    parts = tuple(torch.empty((len(images), *images.shape[2:]), dtype=dtype, device=images.device) for _ in range(3))
    # slice by slice of the batch, so that the twenty passes stay in a core's cache
    for rows in chunks(images):
        x = images[rows] if images.is_floating_point() else images[rows].float() / 255
        top, chroma, sixths = (part[rows] for part in parts)
        r, g, b = x.unbind(dim=1)
        torch.maximum(r, g, out=top)
        torch.maximum(top, b, out=top)
        torch.minimum(r, g, out=chroma)
        torch.minimum(chroma, b, out=chroma)
        torch.sub(top, chroma, out=chroma)
        is_r = top == r
        is_g = (top == g) & ~is_r
        red, green = is_r.to(x.dtype), is_g.to(x.dtype)
        blue = 1 - red - green
        torch.mul(g - b, red, out=sixths).addcmul_(b - r, green).addcmul_(r - g, blue)
        sixths.div_(chroma + (chroma == 0))  # grey pixels have no hue: 0 / 1
        sixths.add_(green, alpha=2).add_(blue, alpha=4)
    return parts


def _hue_rotate(images: torch.Tensor, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shift: float) -> torch.Tensor:
    """HSV -> RGB with the hue shifted: channel n is top - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + hue) mod 6."""
    top, chroma, sixths = parts
    # hue >= -1 and shift >= -1/2 turn, so the 6 added keeps k positive and mod 6 is frac(k / 6) * 6,
    # which runs at twice the speed of torch.remainder
    n = torch.tensor([5.0, 3.0, 1.0], dtype=sixths.dtype, device=sixths.device).view(1, 3, 1, 1) + (6 + 6 * shift)
    out = torch.empty(images.shape, dtype=sixths.dtype, device=sixths.device)
    # slice by slice of the batch: the seven passes over k stay in a core's cache
    for rows in chunks(images):
        k = (sixths[rows, None] + n).div_(6).frac_().mul_(6)
        torch.minimum(k, 4 - k, out=k).clamp_(0, 1)
        torch.addcmul(top[rows, None], chroma[rows, None], k, value=-1, out=out[rows])
    if images.is_floating_point():
        return out.to(images.dtype)
    return (out * 255).round_().clamp_(0, 255).to(images.dtype)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur as torchvision's ``gaussian_blur`` (reflected borders), as two matrix products.

    Blurring along one axis is a linear map of that axis, reflections included, so
    it is a W x W (then H x H) matrix: a matmul runs at BLAS speed where a depthwise
    k x k convolution does not (10-20x faster on a CPU at sigma 4).
    """
    _check(images)
    if sigma <= 0:
        return images
    size = 2 * math.ceil(3 * sigma) + 1
    height, width = images.shape[-2:]
    # Beyond the image the kernel only weights reflected pixels; cut it to fit, keeping it odd.
    kx = min(size, width if width % 2 else width - 1)
    ky = min(size, height if height % 2 else height - 1)
    x = images if images.is_floating_point() else images.float()
    x = x @ _blur_matrix(width, kx, sigma, x).T
    x = _blur_matrix(height, ky, sigma, x) @ x
    return x if images.is_floating_point() else x.round_().to(images.dtype)


def _blur_matrix(length: int, size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``length`` x ``length``: row i holds the Gaussian taps around i, reflected at the borders."""
    offsets = torch.arange(size, device=like.device) - size // 2
    weights = torch.exp(-0.5 * (offsets.to(like.dtype) / sigma) ** 2)
    weights = weights / weights.sum()
    source = torch.arange(length, device=like.device)[:, None] + offsets
    source = source.abs()  # reflect at the first pixel: -1 -> 1
    source = torch.where(source > length - 1, 2 * (length - 1) - source, source)  # and at the last
    matrix = torch.zeros(length, length, dtype=like.dtype, device=like.device)
    return matrix.scatter_add_(1, source, weights.expand(length, size).contiguous())


def resolution(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Shrink each side to ``scale`` of its length and scale back up to the input size.

    Both resizes are antialiased bilinear, linear and separable, so on float images
    each is a matrix per axis (built by resizing the identity) and the corruption is
    matrix products: through the small image when that is cheaper (strong shrinks),
    else one L x L round-trip matrix per axis. uint8 images keep torchvision's two
    resizes, rounding in between as a saved low-resolution image would.
    """
    _check(images)
    if scale >= 1:
        return images
    height, width = images.shape[-2:]
    small = [max(1, round(height * scale)), max(1, round(width * scale))]
    if not images.is_floating_point():
        # Bilinear weights are non-negative, so neither step leaves the value range (bicubic would).
        low = TF.resize(images, small, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.resize(low, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    rows_down, rows_up = _resize_matrix(height, small[0], images), _resize_matrix(small[0], height, images)
    cols_down, cols_up = _resize_matrix(width, small[1], images), _resize_matrix(small[1], width, images)
    # multiply-adds per image of each order
    through_small = height * width * (small[0] + small[1]) + small[0] * small[1] * (height + width)
    round_trip = height * width * (height + width)
    if through_small < round_trip:
        return (rows_up @ (rows_down @ images @ cols_down.T) @ cols_up.T).clamp_(0, 1)
    return ((rows_up @ rows_down) @ images @ (cols_up @ cols_down).T).clamp_(0, 1)


def _resize_matrix(length: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``size`` x ``length``: the antialiased bilinear resize of one axis from ``length`` to ``size``."""
    eye = torch.eye(length, dtype=like.dtype, device=like.device)
    # each column is an impulse; resizing along the rows gives the resize's matrix
    return TF.resize(eye[None], [size, length], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0]


def markup(
    images: torch.Tensor, strokes: int, keys: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """Draw ``strokes`` pen strokes on each image, the same ones for the same key."""
    return _Batch(images, keys).markup(strokes)


class _Strokes:
    """A batch's pen strokes: inks, curves, and the distance of every pixel to the first n strokes."""

    def __init__(self, images: torch.Tensor, keys: torch.Tensor | Sequence[int] | None) -> None:
        batch, _, self.height, self.width = images.shape
        device = images.device
        # Geometry comes from numpy on the CPU in float64, so it does not depend on the
        # device or on torch's generator; only the rasterising runs on the device.
        inks, curves = _pens(_keys(keys, batch))
        self.ink = torch.tensor(inks, dtype=torch.float32, device=device)[:, :, None, None]
        points = torch.tensor(curves, dtype=torch.float32, device=device)
        self.points = points * torch.tensor([self.width, self.height], dtype=torch.float32, device=device)
        self.half_width = max(2.0, STROKE_WIDTH * min(self.height, self.width)) / 2
        self._distance2: list[torch.Tensor] = []  # [n - 1]: squared distance to the nearest of the first n strokes

    def distance2(self, strokes: int) -> torch.Tensor:
        while len(self._distance2) < strokes:
            stroke = self.points[:, len(self._distance2)]
            d2 = _stroke_distance2(stroke, self.height, self.width, reach=self.half_width + 0.5)
            self._distance2.append(torch.minimum(self._distance2[-1], d2) if self._distance2 else d2)
        return self._distance2[strokes - 1]

    def alpha(self, strokes: int, rows: slice = slice(None)) -> torch.Tensor:
        """N x 1 x H x W: the ink's opacity on the images ``rows``, one pixel of linear falloff at the
        edge instead of a jagged threshold."""
        # Most pixels are far from every stroke, at distance inf, where sqrt is 15x slower than on finite
        # values: capped a pixel beyond the edge (the ink is 0 there either way), the distances are all finite.
        far = (self.half_width + 1.5) ** 2
        distance = self.distance2(strokes)[rows].clamp(max=far).sqrt_()
        return (self.half_width + 0.5 - distance).clamp_(0, 1).mul_(INK_OPACITY)[:, None]

    def draw(self, images: torch.Tensor, strokes: int) -> torch.Tensor:
        if images.dtype == torch.uint8:
            alpha = self.alpha(strokes)
            drawn = images.float() / 255 * (1 - alpha) + self.ink * alpha
            out = (drawn * 255).round().clamp(0, 255).to(torch.uint8)
            # Untouched pixels are copied, not recomputed, so they stay bit-identical.
            return torch.where(alpha > 0, out, images)
        # in float, x * 1 + ink * 0 is x exactly: untouched pixels stay bit-identical as they are
        ink, out = self.ink.to(images.dtype), torch.empty_like(images)
        # slice by slice of the batch, each slice's passes in a core's cache (as corrupt_medmnistc's)
        for rows in chunks(images):
            alpha = self.alpha(strokes, rows).to(images.dtype)
            torch.mul(images[rows], 1 - alpha, out=out[rows]).addcmul_(ink[rows], alpha).clamp_(0, 1)
        return out


def _stroke_distance2(points: torch.Tensor, height: int, width: int, reach: float) -> torch.Tensor:
    """B x H x W squared distance of each pixel centre to one stroke (B x points x 2, as (x, y)), exact within ``reach``.

    A stroke is thin, so each chord is measured only over a small window of pixels
    around it (every pixel nearer than ``reach``) instead of the whole image: about
    1 % of the work at 64 px. Pixels no chord reaches stay at infinity. The windows are
    laid out pixel by pixel over all chords (size x size x B x chords, as
    :func:`medtune.corrupt_keyed.canvas_index`), so the ops run along B x chords.
    """
    device = points.device
    # B x chords each, x and y apart and contiguous (strided views would not vectorise, see canvas_index)
    ax, ay, bx, by = (p.contiguous() for p in (*points[:, :-1].unbind(-1), *points[:, 1:].unbind(-1)))
    # Pixel i has its centre at i + 0.5; the window spans every centre within reach of the chord's box.
    size = int(torch.ceil(torch.maximum((ax - bx).abs().max(), (ay - by).abs().max()) + 2 * reach).item()) + 2
    offsets = torch.arange(size, device=device, dtype=points.dtype).view(-1, 1, 1)
    px = torch.floor(torch.minimum(ax, bx) - reach - 0.5) + offsets  # size x B x chords
    py = torch.floor(torch.minimum(ay, by) - reach - 0.5) + offsets
    abx, aby = bx - ax, by - ay
    tx = (px + 0.5 - ax)[None]  # 1 x size x B x chords: columns
    ty = (py + 0.5 - ay)[:, None]  # size x 1 x B x chords: rows
    # (tx - t abx)^2 + (ty - t aby)^2, t = clamp((tx abx + ty aby) / |ab|^2, 0, 1): in place, two windows' worth of memory
    t = torch.add(tx * abx, ty * aby).div_((abx * abx + aby * aby).clamp_min(1e-12)).clamp_(0, 1)
    d2 = torch.sub(tx, t * abx).pow_(2)
    d2.add_(torch.sub(ty, t.mul_(aby), out=t).pow_(2))  # size x size x B x chords
    # pixels outside the image land in the canvas's spare row and column
    image = torch.arange(len(points), device=device)[:, None]
    return paint(d2, canvas_index(px, py, image, height, width), len(points), height, width, reduce="amin", empty=float("inf"))


@functools.lru_cache(maxsize=8192)  # a batch's keys come back once per markup level
def _pen_draws(key: int) -> tuple[int, np.ndarray]:
    """Ink index and MAX_STROKES x 5 uniforms from the stream of one key."""
    rng = np.random.default_rng([_MARKUP_SALT, key])
    return int(rng.integers(len(INKS))), rng.random((MAX_STROKES, 5))


def _pens(keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Inks (B x 3) and MAX_STROKES sampled Bezier curves per key (B x strokes x points x 2,
    (x, y) in [0, 1] image coordinates). All MAX_STROKES are drawn so fewer are a prefix of more."""
    inks, u = zip(*(_pen_draws(key) for key in keys))
    u = np.stack(u)
    start = 0.1 + 0.8 * u[..., 0:2]
    angle = 2 * np.pi * u[..., 2]
    length = 0.25 + 0.35 * u[..., 3]
    bend = -0.4 + 0.8 * u[..., 4]
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    normal = np.stack([-direction[..., 1], direction[..., 0]], axis=-1)
    end = start + length[..., None] * direction
    control = (start + end) / 2 + (bend * length)[..., None] * normal
    t = np.linspace(0, 1, _BEZIER_SEGMENTS + 1)[:, None]
    curves = (
        (1 - t) ** 2 * start[..., None, :] + 2 * (1 - t) * t * control[..., None, :] + t**2 * end[..., None, :]
    )
    return np.array([INKS[i] for i in inks]), curves


def _keys(keys: torch.Tensor | Sequence[int] | None, batch: int) -> list[int]:
    if keys is None:
        return list(range(batch))
    values = torch.as_tensor(keys)
    if values.dim() != 1 or len(values) != batch or values.is_floating_point() or values.is_complex():
        got = f"shape {tuple(values.shape)}, {values.dtype}"
        raise ValueError(f"keys must be {batch} integers, one per image; got {got}")
    values = values.tolist()
    if min(values) < 0:
        raise ValueError(f"keys must be non-negative, got {min(values)}")
    return values


def _check(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a B x 3 x H x W tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")


_FUNCTIONS = {
    "brightness": brightness,
    "contrast": contrast,
    "blur": blur,
    "resolution": resolution,
    "saturation": saturation,
    "hue": hue,
}
