"""Vectorised H&E rendering for the synthetic dataset: tissue parameters in, uint8 RGB out.

A batch of images is drawn at once with numpy, in four steps:

1. **stain concentrations** — haematoxylin and eosin density maps built from smooth noise
   fields (broad, granular, and fibre-like sheared streaks), sprite layers stamped with
   ``np.bincount`` (nuclei, nuclear fragments, fat vacuoles, gland lumens) and a tissue mask;
2. **Beer–Lambert** — optical density ``OD = c_H · h + c_E · e`` with the centre's stain vectors
   ``h, e`` (RGB, per unit concentration) and intensities, transmitted light ``I = I0 · exp(−OD)``;
3. **scanner** — the centre's Gaussian blur (applied to the nucleus sprites) and sensor noise;
4. quantisation to uint8.

Determinism on any machine: random numbers come only from numpy's PCG64 ``Generator``
(``random`` and ``integers``, which are bit-exact everywhere), and the pixel arithmetic uses
only ``+ − × ÷ √`` as separate ufunc calls (IEEE-754 rounds each one exactly, with no fused
or reordered operations) and integer gathers. The transcendental functions (``exp``) are
evaluated once into small float64 tables rounded to float32, and sprite angles are the exact
multiples of 15° built from square roots, so no vendor maths library touches a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# --- sprite banks -------------------------------------------------------------------------------

N_ANGLES = 12  # sprite orientations: multiples of 15 degrees over half a turn
NUCLEUS_RADII = np.arange(0.5, 4.01, 0.25)  # in pixels of a 64-px image
NUCLEUS_ELONGATIONS = np.array([1.0, 1.4, 2.0, 2.8, 4.0, 5.5])
BLOB_RADII = np.arange(2.0, 16.01, 0.5)  # lumens and fat vacuoles
BLOB_ELONGATIONS = np.array([1.0, 1.4, 2.0])
OD_STEP = 1024  # optical-density table resolution (bins per unit)
OD_MAX = 8.0


def _angle_table() -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of k·15° for k = 0..23, from square roots only (exactly rounded)."""
    s2, s3, s6 = np.sqrt(2.0), np.sqrt(3.0), np.sqrt(6.0)
    first = np.array([1.0, (s6 + s2) / 4, s3 / 2, s2 / 2, 0.5, (s6 - s2) / 4, 0.0])  # cos 0..90 deg
    cos_q = np.concatenate([first, -first[-2::-1]])  # 0..180 deg, 13 values
    cos = np.concatenate([cos_q, cos_q[-2:0:-1]])  # 0..345 deg: cos(360 - x) = cos(x)
    sin = np.concatenate([cos[18:], cos[:18]])  # sin(x) = cos(x - 90 deg)
    return cos, sin


COS24, SIN24 = _angle_table()


def _ellipse_cover(half: int, radius: np.ndarray, elong: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Soft (about 1 px wide edge) coverage of centred ellipses, one per row of the arguments,
    with the same area as a circle of ``radius``; long axis at ``angle`` (index of 15 degrees)."""
    d = np.arange(-half, half + 1, dtype=np.float64)
    dy, dx = d[:, None], d[None, :]
    major = radius * np.sqrt(elong)
    minor = radius / np.sqrt(elong)
    c, s = COS24[angle], SIN24[angle]
    u = (dx[None] * c[:, None, None] + dy[None] * s[:, None, None]) / major[:, None, None]
    v = (dy[None] * c[:, None, None] - dx[None] * s[:, None, None]) / minor[:, None, None]
    q = np.sqrt(u * u + v * v)
    return np.clip((1.0 - q) * minor[:, None, None] + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class SpriteBank:
    """Sprites in tiers of growing half-size (cropped copies of the largest), so that a small
    sprite is stamped over a small square: ``banks[t][index]`` is a flat (2·halves[t] + 1)² sprite."""

    halves: tuple[int, ...]
    banks: tuple[np.ndarray, ...]
    margin: float = 0.0  # added to every extent (a blurred sprite reaches further)

    @staticmethod
    def from_full(full: np.ndarray, half: int, halves: tuple[int, ...], margin: float = 0.0) -> "SpriteBank":
        side = 2 * half + 1
        square = full.reshape(*full.shape[:-1], side, side)
        banks = []
        for h in halves:
            crop = square[..., half - h : half + h + 1, half - h : half + h + 1]
            banks.append(np.ascontiguousarray(crop.reshape(*full.shape[:-1], -1)))
        return SpriteBank(halves, tuple(banks), margin)

    def tier(self, extent: np.ndarray) -> np.ndarray:
        """The smallest tier holding a sprite whose long semi-axis is ``extent`` pixels."""
        fits = extent[:, None] + self.margin <= np.asarray(self.halves)[None, :] - 0.5
        return np.where(fits.any(axis=1), fits.argmax(axis=1), len(self.halves) - 1)


def _tiers(scale: float, halves_at_64: tuple[int, ...], largest: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, int(np.ceil(h * scale))) for h in halves_at_64 if h * scale < largest} | {largest}))


def blur_radius(size: int) -> int:
    """Half-width of the scanner's blur kernel: 2 px at 64 px."""
    return max(1, int(round(2 * size / 64)))


@lru_cache(maxsize=8)
def nucleus_bank(size: int, blur_sigmas: tuple[float, ...]) -> SpriteBank:
    """Nucleus sprites of a ``size``-px image, indexed [centre, radius, elongation, angle, kind]:
    kind 0 solid, kind 1 vesicular (dark rim, pale centre, a nucleolus), with a fixed chromatin
    granularity from a fixed stream, seen through each centre's scanner (Gaussian blur of
    ``blur_sigmas[centre]`` px at 64 px). Blurring the sprites is blurring the nuclear layer
    exactly (it is their sum); the smooth fields it is added to are coarser than the blur."""
    scale = size / 64
    pad = blur_radius(size)
    half = int(np.ceil(6 * scale)) + pad
    grid = np.stack(np.meshgrid(np.arange(len(NUCLEUS_RADII)), np.arange(len(NUCLEUS_ELONGATIONS)), np.arange(N_ANGLES), indexing="ij"), -1).reshape(-1, 3)
    r = NUCLEUS_RADII[grid[:, 0]] * scale
    e = NUCLEUS_ELONGATIONS[grid[:, 1]]
    outer = _ellipse_cover(half, r, e, grid[:, 2])
    inner = _ellipse_cover(half, r * 0.62, e, grid[:, 2])
    dot = _ellipse_cover(half, np.maximum(r * 0.28, 0.45 * scale), np.ones_like(e), grid[:, 2])
    grain = 0.8 + 0.4 * np.random.default_rng(20240917).random(outer.shape)
    solid = outer * grain
    vesicular = np.clip(outer - 0.7 * inner, 0.0, 1.0) * grain + 0.8 * dot
    sharp = np.stack([solid, vesicular], axis=1).astype(np.float32)  # (n, 2, side, side)
    side = 2 * half + 1
    flat = sharp.reshape(-1, side, side)
    centres = []
    for sigma in blur_sigmas:
        taps = np.broadcast_to(gaussian_taps(sigma * scale, pad), (len(flat), 2 * pad + 1))
        centres.append(blur(flat, taps))
    shape = (len(blur_sigmas), len(NUCLEUS_RADII), len(NUCLEUS_ELONGATIONS), N_ANGLES, 2, side * side)
    return SpriteBank.from_full(np.stack(centres).reshape(shape), half, _tiers(scale, (3, 4, 5), half), margin=pad / 2)


@lru_cache(maxsize=8)
def blob_bank(size: int) -> SpriteBank:
    """Soft filled ellipses (lumens, fat vacuoles) of a ``size``-px image, indexed [radius, elongation, angle]."""
    scale = size / 64
    half = int(np.ceil(16 * scale)) + 1
    grid = np.stack(np.meshgrid(np.arange(len(BLOB_RADII)), np.arange(len(BLOB_ELONGATIONS)), np.arange(N_ANGLES), indexing="ij"), -1).reshape(-1, 3)
    cover = _ellipse_cover(half, BLOB_RADII[grid[:, 0]] * scale, BLOB_ELONGATIONS[grid[:, 1]], grid[:, 2])
    shape = (len(BLOB_RADII), len(BLOB_ELONGATIONS), N_ANGLES, -1)
    return SpriteBank.from_full(cover.reshape(shape).astype(np.float32), half, _tiers(scale, (6, 9, 13), half))


def nearest_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to each value (grids are sorted)."""
    pos = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    return pos - ((values - grid[pos - 1]) < (grid[pos] - values))


def stamp(n_images: int, size: int, bank: SpriteBank, index: tuple[np.ndarray, ...], extent: np.ndarray,
          image: np.ndarray, y: np.ndarray, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Sum of ``weight · bank[index]`` stamped at integer centres (y, x) in [0, S) of their
    images, wrapping around the edges (the tissue continues beyond the patch): float32
    (n_images, S, S). One ``bincount`` adds them all, in a fixed order."""
    tier = bank.tier(extent)
    picks = [np.flatnonzero(tier == t) for t in range(len(bank.halves))]
    lengths = [len(pick) * (2 * h + 1) ** 2 for pick, h in zip(picks, bank.halves)]
    flat = np.empty(sum(lengths), dtype=np.intp)
    values = np.empty(sum(lengths), dtype=np.float64)
    start = 0
    for t, (pick, half, length) in enumerate(zip(picks, bank.halves, lengths)):
        if length == 0:
            continue
        side = 2 * half + 1
        d = np.arange(-half, half + 1)
        rows = ((y[pick, None] + d) % size) * size + (image[pick] * size * size)[:, None]  # (m, side), small
        cols = (x[pick, None] + d) % size
        np.add(rows[:, :, None], cols[:, None, :], out=flat[start : start + length].reshape(len(pick), side, side))
        bank_t = bank.banks[t]
        rows_of = np.ravel_multi_index(tuple(i[pick] for i in index), bank_t.shape[:-1])
        sprites = np.take(bank_t.reshape(-1, side * side), rows_of, axis=0)
        np.multiply(sprites, weight[pick, None].astype(np.float64), out=values[start : start + length].reshape(len(pick), side * side))
        start += length
    summed = np.bincount(flat, weights=values, minlength=n_images * size * size)
    return summed.reshape(n_images, size, size).astype(np.float32)


# --- smooth fields --------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _interp(cells: int, out: int, smooth: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation from ``cells + 1`` knots to ``out`` samples: smoothstep weights for
    random fields (no visible grid), linear ones for resampling an image (no plateaus)."""
    t = (np.arange(out) + 0.5) / out * cells
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    w1 = (f * f * (3 - 2 * f) if smooth else f).astype(np.float32)
    return i0, i0 + 1, (1 - w1).astype(np.float32), w1


def upsample(knots: np.ndarray, rows: int, cols: int, smooth: bool = True) -> np.ndarray:
    """(B, r + 1, c + 1) knots -> (B, rows, cols), interpolated (see :func:`_interp`)."""
    r0, r1, a0, a1 = _interp(knots.shape[1] - 1, rows, smooth)
    c0, c1, b0, b1 = _interp(knots.shape[2] - 1, cols, smooth)
    # x0 a0 + x1 a1 along each axis, in place on gathered copies (the same two products and one add)
    t = np.take(knots, r0, axis=1)
    t *= a0[None, :, None]
    t1 = np.take(knots, r1, axis=1)
    t1 *= a1[None, :, None]
    t += t1
    out = np.take(t, c0, axis=2)
    out *= b0[None, None, :]
    o1 = np.take(t, c1, axis=2)
    o1 *= b1[None, None, :]
    out += o1
    return out


def smooth_field(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    return upsample(rng.random((n, cells + 1, cells + 1), dtype=np.float32), size, size)


# tan of -45..45 degrees in 15-degree steps, exactly rounded from square roots
_S3 = np.sqrt(3.0)
SHEAR_TAN = np.array([-1.0, -1 / _S3, -(2 - _S3), 0.0, 2 - _S3, 1 / _S3, 1.0])


def _is_vertical(orientation: np.ndarray) -> np.ndarray:
    return (orientation >= 3) & (orientation <= 9)  # 45..135 degrees


def _tilt(orientation: np.ndarray) -> np.ndarray:
    """Shear steps (-3..3 of 15 degrees) of the horizontal or the transposed field."""
    return np.where(_is_vertical(orientation), orientation - 6, (orientation + 3) % 12 - 3)


def fibre_field(rng: np.random.Generator, n: int, size: int, orientation: np.ndarray, wave: np.ndarray, spacing: float) -> np.ndarray:
    """Streaks along ``orientation`` (index of 15 degrees), bent by ``wave`` (0..1): a smooth
    random 1-D profile across the fibres (a knot every ``spacing`` px), read through a shear
    (position = y + k·x + bend(x)), with x and y swapped for near-vertical fibres."""
    length = 3 * size
    profile = upsample(rng.random((n, 2, max(3, int(length / spacing)) + 1), dtype=np.float32), 1, length)[:, 0]
    bend = upsample(rng.random((n, 2, 5), dtype=np.float32), 1, size)[:, 0]  # slow 1-D bends
    k = SHEAR_TAN[_tilt(orientation) + 3]
    t = np.arange(size, dtype=np.float64)
    shift = np.floor(k[:, None] * (t[None, :] - size / 2) + 0.5)
    shift += np.floor((bend.astype(np.float64) - 0.5) * 2 * wave[:, None] * (size / 8) + 0.5)
    shift = shift.astype(np.intp) + size + (np.arange(n) * length)[:, None]  # into the flattened profiles
    vertical = _is_vertical(orientation)
    position = np.empty((n, size, size), dtype=np.intp)
    across = np.arange(size)
    # horizontal: position = y + shift(x); vertical (transposed): position = x + shift(y)
    position[~vertical] = across[None, :, None] + shift[~vertical][:, None, :]
    position[vertical] = across[None, None, :] + shift[vertical][:, :, None]
    return np.take(profile.ravel(), position)


def fibre_sprite_angle(orientation: np.ndarray) -> np.ndarray:
    """The sprite angle index (long axis, image coordinates, y down) of fibres of ``orientation``."""
    vertical, tilt = _is_vertical(orientation), _tilt(orientation)
    # a horizontal-family field is constant along y + kx = c: direction angle -atan(k);
    # a transposed one along x + ky = c: direction angle 90 + atan(k)
    return np.where(vertical, 6 + tilt, -tilt) % N_ANGLES


# --- stain and scanner ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def transmission_table() -> np.ndarray:
    """exp(-OD) at the centres of OD bins of width 1 / OD_STEP, float32 (the one place exp is
    evaluated): entry i serves every OD in [i, i + 1) / OD_STEP."""
    return np.exp(-(np.arange(int(OD_MAX * OD_STEP)) + 0.5) / OD_STEP).astype(np.float32)


@lru_cache(maxsize=64)
def gaussian_taps(sigma: float, radius: int = 2) -> np.ndarray:
    """Normalised Gaussian taps (float32, 2·radius + 1); a delta for sigma 0."""
    if sigma <= 0:
        taps = np.zeros(2 * radius + 1)
        taps[radius] = 1.0
        return taps.astype(np.float32)
    d = np.arange(-radius, radius + 1)
    taps = np.exp(-(d * d) / (2 * sigma * sigma))
    return (taps / taps.sum()).astype(np.float32)


def blur(planes: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable blur of (B, S, S) with symmetric per-image taps (B, 2r + 1), edges repeated."""
    n, size, _ = planes.shape
    r = taps.shape[1] // 2
    padded = np.empty((n, size + 2 * r, size + 2 * r), dtype=np.float32)
    padded[:, r : r + size, r : r + size] = planes
    padded[:, :r, r : r + size] = planes[:, :1]
    padded[:, r + size :, r : r + size] = planes[:, -1:]
    padded[:, :, :r] = padded[:, :, r : r + 1]
    padded[:, :, r + size :] = padded[:, :, r + size - 1 : r + size]
    w = taps[:, :, None, None]
    # symmetric taps: w[r] x[0] + sum_k w[r - k] (x[-k] + x[+k]), the same adds in the same order each time
    rows = padded[:, r : r + size] * w[:, r]
    for k in range(1, r + 1):
        pair = padded[:, r - k : r - k + size] + padded[:, r + k : r + k + size]
        pair *= w[:, r - k]
        rows += pair
    out = rows[:, :, r : r + size] * w[:, r]
    for k in range(1, r + 1):
        pair = rows[:, :, r - k : r - k + size] + rows[:, :, r + k : r + k + size]
        pair *= w[:, r - k]
        out += pair
    return out


def scan(c_h: np.ndarray, c_e: np.ndarray, h_od: np.ndarray, e_od: np.ndarray, white: np.ndarray, noise: np.ndarray,
         rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB (B, S, S, 3) of stain concentrations (B, S, S) by Beer–Lambert,
    I = I0 · exp(−(c_H · h + c_E · e)), with per-image stain vectors ``h_od``, ``e_od`` (B, 3;
    optical density per unit concentration) and illumination ``white`` (B, 3) in [0, 1], plus
    uniform sensor noise of standard deviation ``noise`` (B,), one plane shared by the three
    channels (demosaicing correlates them)."""
    n, size, _ = c_h.shape
    table = transmission_table()
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    light = np.empty((n, size, size), dtype=np.float32)
    # the noise plane u·a + b, with the quantiser's +0.5 folded into b
    amplitude = (noise * np.float32(255 * np.sqrt(12.0)))[:, None, None]
    grain = rng.random((n, size, size), dtype=np.float32)
    grain *= amplitude
    grain += np.float32(0.5) - amplitude * np.float32(0.5)
    od = np.empty((n, size, size), dtype=np.float32)
    e_part = np.empty((n, size, size), dtype=np.float32)
    bins = np.empty((n, size, size), dtype=np.intp)
    for ch in range(3):
        np.multiply(c_h, (h_od[:, ch] * np.float32(OD_STEP))[:, None, None], out=od)
        np.multiply(c_e, (e_od[:, ch] * np.float32(OD_STEP))[:, None, None], out=e_part)
        od += e_part
        np.copyto(bins, od, casting="unsafe")  # OD >= 0: truncation is the bin
        np.take(table, bins, out=light, mode="clip")
        light *= (white[:, ch] * np.float32(255))[:, None, None]
        light += grain
        np.maximum(light, 0.0, out=light)
        np.minimum(light, 255.0, out=light)
        out[..., ch] = light  # truncating value + 0.5: rounding
    return out
