"""The ``medmnistc`` suite: MedMNIST-C's PathMNIST corruptions and a HED stain shift.

MedMNIST-C (Di Salvo et al. 2024, ``francescodisalvo05/medmnistc-api``) corrupts
MedMNIST+'s 224 px images with PIL, OpenCV, scikit-image and ImageMagick, one image at a
time. Here each corruption is the same definition on a batch B x 3 x H x W on the
device (JPEG through ``torchvision.io`` on the CPU), at the severities of
:data:`medtune.conditions.MEDMNISTC_SEVERITIES`:

* pixelate: PIL's box resize to ``int(side * factor)`` and back (box weights as PIL's
  ``precompute_coeffs``); uint8 images round after each pass as PIL's 8-bit resampler.
* jpeg_compression: libjpeg at the given quality (4:2:0), as PIL's ``save(..., 'JPEG')``.
* defocus_blur: an aliased disk (OpenCV's 3 x 3 Gaussian of sigma ``alias`` over it),
  correlated with reflected borders (OpenCV's ``BORDER_REFLECT_101``).
* motion_blur: ImageMagick's ``MotionBlurImage``: a one-sided line of
  ``2 * ceil(radius) + 1`` taps weighted ``exp(-j^2 / 2 sigma^2)``, edge pixels repeated,
  at an angle drawn per image in [-45, 45] degrees.
* brightness_*, contrast_*: PIL's ``ImageEnhance`` (a blend with black, or with the
  image's mean grey); uint8 images truncate as PIL's blend does.
* saturate: HSV saturation + delta, clipped to 1 (scikit-image's ``rgb2hsv``; grey pixels
  have hue 0, so they turn red as there).
* stain_deposit: 1..n black ink blobs (n the level, the count drawn uniformly), 24 px
  (32 px at level 5) at least 10 px from the border. MedMNIST-C draws them from ten
  stored masks; ours are random star-shaped blobs filling about 60 % of their box, as those do.
* bubble: 7..n white bubbles (uniform count), radius uniform in 3..r px, each a disc of
  opacity 100/255 in a 2 px ring of 130/255, a later bubble covering an earlier one.
* hed_shift (beyond MedMNIST-C; Tellez et al. 2018): optical density ``-ln(max(x, 1e-6))``
  unmixed into haematoxylin, eosin and DAB with scikit-image's ``hed_from_rgb``, each
  stain scaled by alpha ~ N(1, sigma) and shifted by beta ~ N(0, sigma), mixed back with
  ``rgb_from_hed``.

Lengths are MedMNIST-C's in pixels of a 224 px image, scaled by ``min(H, W) / 224``: at
224 px they are the published ones, at other sizes they cover the same share of the tile.
Random elements (angles, marks, bubbles, stain draws) come from a stream seeded by the
image's key, so an image is corrupted the same way in any batch; one draw serves all five
levels (levels grow the same marks, bubbles and stain shift).

Float images stay unquantised (no 8-bit rounding unless the reference's format needs it:
JPEG). uint8 images follow the reference's 8-bit arithmetic where it has one.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medtune.conditions import MEDMNISTC_SEVERITIES
from medtune.corrupt_keyed import SIDE, bubble_codes, bubble_opacity, hed_draws, motion_angles, stain_masks

# scikit-image's haematoxylin-eosin-DAB stain vectors (Ruifrok & Johnston 2001), rows H, E, D
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_JPEG_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-jpeg")
# torchvision 0.29 announces its JPEG codec's move to TorchCodec on every call; the codec is libjpeg either way
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)

Levels = dict[int, torch.Tensor]


class Batch:
    """One batch under any number of ``medmnistc`` conditions.

    ``wanted`` (corruption -> levels) names the conditions to come: the wanted levels of a
    corruption are made together, chunk by chunk of the batch (:func:`_by_chunks`), sharing
    their common work (a motion blur's shifted copies, the HSV split, the log image); each is
    handed out once and dropped. JPEG starts at once in a thread of its own where that thread has
    a core of its own (:func:`_jpeg_beside`).
    """

    def __init__(self, images: torch.Tensor, keys: Sequence[int], wanted: dict[str, set[int]] | None = None) -> None:
        self.images, self.keys = images, list(keys)
        self.wanted = wanted or {}
        self.scale = min(images.shape[-2:]) / SIDE
        self._made: dict[str, Levels] = {}
        self._handed: dict[str, set[int]] = {}
        self._jpeg = None
        if self.wanted.get("jpeg_compression") and _jpeg_beside(images):
            # libjpeg runs on the CPU and releases the GIL: it overlaps with whatever the caller does
            # with the conditions before (encoding them, on a GPU). On a CPU batch the round trips'
            # conversions back to the batch's layout and type go there too (torch releases the GIL:
            # another core does them); a GPU batch's are made when asked for, not held on the device.
            qualities = sorted({_param("jpeg_compression", lv) for lv in self.wanted["jpeg_compression"]})
            self._jpeg = _JPEG_THREAD.submit(_jpeg_levels, images, qualities, images.device.type == "cpu")

    def apply(self, corruption: str, level: int) -> torch.Tensor:
        made = self._made.setdefault(corruption, {})
        handed = self._handed.setdefault(corruption, set())
        if level not in made:
            levels = sorted((set(self.wanted.get(corruption, ())) - handed - set(made)) | {level})
            made.update(self._family(corruption, levels))
        handed.add(level)
        return made.pop(level)

    def _family(self, corruption: str, levels: list[int]) -> Levels:
        params = {lv: _param(corruption, lv) for lv in levels}
        images, keys, scale = self.images, self.keys, self.scale
        if corruption == "jpeg_compression":
            converted = images.device.type == "cpu"
            done = self._jpeg.result() if self._jpeg is not None else {}
            self._jpeg = None  # its batches are handed out once: a level asked for again is made again
            missing = [q for q in params.values() if q not in done]
            done = {**done, **(_jpeg_levels(images, missing, converted) if missing else {})}
            return {lv: done[q] if converted else _from_hwc(done[q], images) for lv, q in params.items()}
        if images.dtype == torch.uint8 and corruption in _PIL_8BIT:
            return {lv: _PIL_8BIT[corruption](images, p) for lv, p in params.items()}
        if corruption == "pixelate":
            return _by_chunks(images, levels, lambda x, out, rows: [_pixelate_into(x, f, out[lv]) for lv, f in params.items()])
        if corruption.startswith("brightness"):
            return _by_chunks(images, levels, lambda x, out, rows: [_blend_into(x, None, f, out[lv]) for lv, f in params.items()])
        if corruption.startswith("contrast"):
            grey = _mean_grey(images)
            return _by_chunks(images, levels, lambda x, out, rows: [_blend_into(x, grey[rows], f, out[lv]) for lv, f in params.items()])
        if corruption == "saturate":
            return _by_chunks(images, levels, lambda x, out, rows: _saturate_into(x, params, out), truncate=True)
        if corruption == "defocus_blur":
            half = _disk_half(scale, images.shape[-2:])
            kernels = {lv: _disk_kernel(r * scale, a * scale, half) for lv, (r, a) in params.items()}
            # half slices: a level's sum and the padded slice it reads stay in a core's L2 (1.2x faster)
            return _by_chunks(images, levels, lambda x, out, rows: _defocus_into(x, kernels, half, out), truncate=True, size=3 << 17)
        if corruption == "motion_blur":
            offsets = motion_offsets(motion_angles(keys), _motion_width(15 * scale))
            kernels = {lv: motion_kernel(r * scale, s * scale) for lv, (r, s) in params.items()}
            # half slices: the levels' sums, the shifted copy and the padded slice stay in cache (1.2x faster)
            return _by_chunks(images, levels, lambda x, out, rows: _motion_into(x, kernels, offsets[rows], out), size=3 << 17)
        if corruption == "hed_shift":
            draws = hed_draws(keys)
            mixing = {lv: hed_matrices(1 + s * draws[:, :3], s * draws[:, 3:], _float_dtype(images)) for lv, s in params.items()}
            return _by_chunks(images, levels, lambda x, out, rows: _hed_into(x, {lv: (m[rows], o[rows]) for lv, (m, o) in mixing.items()}, out))
        if corruption == "stain_deposit":
            inked = stain_masks(keys, levels, images.shape[-2:], scale, images.device)
            return _by_chunks(images, levels, lambda x, out, rows: [torch.where(m[rows], x.new_zeros(()), x, out=out[lv]) for lv, m in inked.items()])
        if corruption == "bubble":
            codes = {lv: bubble_codes(keys, r, n, images.shape[-2:], scale, images.device).int() for lv, (r, n) in params.items()}
            alpha = bubble_opacity(_float_dtype(images)).to(images.device)
            keep = 1 - alpha
            return _by_chunks(images, levels, lambda x, out, rows: [_paste_white_into(x, c[rows], alpha, keep, out[lv]) for lv, c in codes.items()])
        raise ValueError(f"not a medmnistc corruption: {corruption!r}")


def _jpeg_beside(images: torch.Tensor) -> bool:
    """Whether a batch's JPEG round trips run on a thread beside the caller's: for a GPU batch, or on a CPU
    where torch computes on one thread. Where torch's threads already fill the job's cores, a third
    thread stalls every one of their parallel steps while it runs: at 2 threads on 2 cores, the 89
    conditions' corruptions took 1.03-1.25 s with JPEG beside and 0.64-0.69 s without (medtune-tiny, 64 px)."""
    return images.device.type != "cpu" or torch.get_num_threads() == 1


def _param(corruption: str, level: int):
    return MEDMNISTC_SEVERITIES[corruption][level - 1]


def _by_chunks(images: torch.Tensor, levels: Sequence[int], fill, truncate: bool = False, size: int = 3 << 18) -> Levels:
    """Every level of a corruption, made slice by slice of the batch: ``fill(x, out, rows)`` writes each
    level of the slice ``x`` (float, [0, 1]) into ``out[level]``. A slice is read from memory once and its
    levels' passes run while it is in a CPU core's cache (2-3x faster than passes over the whole batch);
    on a GPU the whole batch is one slice (``size``: :func:`chunks`). uint8 batches are filled in float,
    then rounded (truncated where the reference casts with ``astype``)."""
    out = {level: torch.empty_like(images) for level in levels}
    for rows in chunks(images, size):
        x = _as_float(images[rows])
        targets = {lv: y[rows] if images.is_floating_point() else torch.empty_like(x) for lv, y in out.items()}
        fill(x, targets, rows)
        if not images.is_floating_point():
            for level, y in targets.items():
                out[level][rows] = _from_float(y, images, truncate)
    return out


def chunks(images: torch.Tensor, size: int = 3 << 18) -> list[slice]:
    """The slices of a batch that :func:`_by_chunks` works on: about ``size`` bytes of float32 each on a CPU
    (768 KiB: they stay in a core's cache between the passes over them), the whole batch on a GPU."""
    batch = len(images)
    step = batch if images.device.type == "cuda" else max(1, size // (images[0].numel() * 4))
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def _float_dtype(images: torch.Tensor) -> torch.dtype:
    """What a batch is computed in: its own float type; uint8 in float64, as the references' ``img / 255.``."""
    return images.dtype if images.is_floating_point() else torch.float64


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images if images.is_floating_point() else images.to(torch.float64) / 255


def _from_float(y: torch.Tensor, like: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """``y`` in [0, 1] in the dtype of ``like``; uint8 rounds, or truncates where the reference casts with ``astype``."""
    if like.is_floating_point():
        return y.to(like.dtype)
    scaled = y * 255
    scaled = scaled.floor_() if truncate else scaled.round_()
    return scaled.clamp_(0, 255).to(torch.uint8)


# ---- pixelate, JPEG, brightness, contrast: PIL's own arithmetic ---------------------------------


def pixelate(images: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL: ``img.resize((int(w * f), int(h * f)), BOX).resize((w, h), BOX)``; each resize is a matrix per axis."""
    if images.dtype == torch.uint8:
        return _pixelate_8bit(images, factor)
    return _pixelate_into(images, factor, torch.empty_like(images))


def _pixelate_matrices(size, factor: float, dtype, device):
    height, width = size
    small = max(1, int(height * factor)), max(1, int(width * factor))
    rows = _box_matrix(height, small[0], dtype, device), _box_matrix(small[0], height, dtype, device)
    cols = _box_matrix(width, small[1], dtype, device), _box_matrix(small[1], width, dtype, device)
    return small, rows, cols


def _pixelate_into(x: torch.Tensor, factor: float, out: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    small, (rows_down, rows_up), (cols_down, cols_up) = _pixelate_matrices((height, width), factor, x.dtype, x.device)
    # multiply-adds per image of each order, as resolution() in corrupt.py
    if height * width * sum(small) + small[0] * small[1] * (height + width) < height * width * (height + width):
        return torch.matmul(rows_up @ (rows_down @ x @ cols_down.T), cols_up.T, out=out)
    return torch.matmul((rows_up @ rows_down) @ x, (cols_up @ cols_down).T, out=out)


def _pixelate_8bit(images: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's 8-bit resampler rounds (half up) after each pass, horizontal first; upscaling copies pixels."""
    _, (rows_down, rows_up), (cols_down, cols_up) = _pixelate_matrices(images.shape[-2:], factor, torch.float32, images.device)
    x = (images.float() @ cols_down.T).add_(0.5).floor_()
    x = (rows_down @ x).add_(0.5).floor_()
    return (rows_up @ x @ cols_up.T).round_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _box_numpy(size_in: int, size_out: int) -> np.ndarray:
    """``size_out`` x ``size_in``: PIL's box resampling of one axis (Resample.c, precompute_coeffs with
    box_filter: weight 1 for input centres with -0.5 < (x - centre + 0.5) / filterscale <= 0.5, normalised)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        centre = (out + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        arg = (np.arange(low, high) - centre + 0.5) / filterscale
        weights = ((arg > -0.5) & (arg <= 0.5)).astype(np.float64)
        matrix[out, low:high] = weights / weights.sum() if weights.sum() else weights
    return matrix


def _box_matrix(size_in: int, size_out: int, dtype, device) -> torch.Tensor:
    return torch.tensor(_box_numpy(size_in, size_out), dtype=dtype, device=device)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode at ``quality`` with libjpeg (``torchvision.io``, on the CPU): byte for byte what
    PIL's ``save(..., 'JPEG', quality=q)`` writes. Float images are quantised to 8 bits first, as a saved image is."""
    return _from_hwc(_jpeg_hwc(images, [quality])[quality], images)


def _jpeg_levels(images: torch.Tensor, qualities: Sequence[int], convert: bool) -> dict[int, torch.Tensor]:
    """Each quality's round trip: B x H x W x 3 uint8 on the CPU (:func:`_jpeg_hwc`), or (``convert``) a batch
    like ``images`` (:func:`_from_hwc`)."""
    hwc = _jpeg_hwc(images, qualities)
    return {q: _from_hwc(h, images) for q, h in hwc.items()} if convert else hwc


def _jpeg_hwc(images: torch.Tensor, qualities: Sequence[int]) -> dict[int, torch.Tensor]:
    """Each quality's round trip as B x H x W x 3 uint8 on the CPU (libjpeg's own layout: no copy per image)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    hwc = images.permute(0, 2, 3, 1)
    if images.dtype == torch.uint8:
        u8 = hwc.cpu().contiguous()
    else:
        u8 = (hwc * 255).round_().clamp_(0, 255).to(device="cpu", dtype=torch.uint8).contiguous()
    chw = list(u8.permute(0, 3, 1, 2))  # views whose memory is already H x W x 3, as encode_jpeg wants it
    # decode_jpeg's images are views of H x W x 3 buffers too: gathered as such, they copy as whole blocks
    return {q: torch.stack([d.permute(1, 2, 0) for d in decode_jpeg(encode_jpeg(chw, quality=int(q)))]) for q in qualities}


def _from_hwc(hwc: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B x H x W x 3 uint8 as a batch like ``like``: same device, dtype and (float) range."""
    chw = hwc.permute(0, 3, 1, 2).to(like.device)
    if like.dtype == torch.uint8:
        return chw.contiguous()
    return torch.div(chw, 255, out=torch.empty(like.shape, dtype=like.dtype, device=like.device))


def brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``ImageEnhance.Brightness``: a blend with black, ``factor * x``, clipped."""
    if images.dtype == torch.uint8:
        return _blend_8bit(images, torch.zeros(len(images), 1, 1, 1, device=images.device), factor)
    return _blend_into(images, None, factor, torch.empty_like(images))


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``ImageEnhance.Contrast``: a blend with the image's mean grey level (:func:`_mean_grey`)."""
    if images.dtype == torch.uint8:
        return _blend_8bit(images, _mean_grey(images), factor)
    return _blend_into(images, _mean_grey(images), factor, torch.empty_like(images))


def _mean_grey(images: torch.Tensor) -> torch.Tensor:
    """B x 1 x 1 x 1: PIL's ``int(mean(L) + 0.5)``, L = (19595 R + 38470 G + 7471 B) / 65536 as its RGB -> L
    (on uint8 images each L rounded as PIL does; on float images in [0, 1], in units of 1/255)."""
    if images.dtype == torch.uint8:
        rgb = images.to(torch.int32)
        luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
        return (luma.double().mean(dim=(1, 2)) + 0.5).floor().float().view(-1, 1, 1, 1)
    weights = torch.tensor([19595, 38470, 7471], dtype=images.dtype, device=images.device) / 65536
    return ((images.mean(dim=(2, 3)) @ weights * 255 + 0.5).floor() / 255).view(-1, 1, 1, 1)


def _blend_into(x: torch.Tensor, degenerate: torch.Tensor | None, factor: float, out: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` on float images, unquantised: factor x + (1 - factor) d,
    clipped to [0, 1]; ``degenerate`` None is black (brightness: darkening stays in range)."""
    if degenerate is None:
        torch.mul(x, factor, out=out)
        return out.clamp_(0, 1) if factor > 1 else out
    return torch.add((1 - factor) * degenerate, x, alpha=factor, out=out).clamp_(0, 1)


def _blend_8bit(images: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's blend on uint8: ``(UINT8)(d + factor * (x - d))`` in C floats, clipped to 0..255, truncated."""
    alpha = torch.tensor(factor, dtype=torch.float32)
    out = degenerate + alpha * (images.float() - degenerate)
    return out.clamp_(0, 255).floor_().to(torch.uint8)


_PIL_8BIT = {
    "pixelate": _pixelate_8bit,
    "brightness_up": brightness,
    "brightness_down": brightness,
    "contrast_up": contrast,
    "contrast_down": contrast,
}


# ---- saturate and the HED stain shift: per-pixel colour maps -------------------------------------


def saturate(images: torch.Tensor, delta: float) -> torch.Tensor:
    """scikit-image: ``hsv[..., 1] = clip(hsv[..., 1] + delta, 0, 1)``, then back to RGB (uint8: truncated)."""
    return _by_chunks(images, [0], lambda x, out, rows: _saturate_into(x, {0: delta}, out), truncate=True)[0]


def _saturate_into(x: torch.Tensor, deltas: dict[int, float], out: Levels) -> None:
    """Every HSV colour is V - S V k, k in [0, 1] fixed by the hue (k = (V - x) / C, C = S V the chroma);
    more saturation is a new S V = min(C + delta V, V) on the same k."""
    top = x.amax(dim=1, keepdim=True)
    chroma = top - x.amin(dim=1, keepdim=True)
    grey = chroma == 0
    k = (top - x) / torch.where(grey, torch.ones_like(chroma), chroma)
    # a grey pixel has hue 0 (red) in scikit-image: k = (0, 1, 1)
    k = torch.where(grey, torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1), k)
    for level, delta in deltas.items():
        # S V <= V and k in [0, 1] exactly (k = 1 is (V - min) / (V - min)): no clip needed
        torch.addcmul(top, torch.minimum(chroma + delta * top, top), k, value=-1, out=out[level])


def hed_matrices(alpha: torch.Tensor, beta: torch.Tensor, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (B x 3 x 3, B x 3): A and c with OD' = OD @ A + c, i.e. ((OD @ hed_from_rgb) * alpha + beta) @ rgb_from_hed."""
    to_hed, to_rgb = torch.tensor(HED_FROM_RGB, dtype=torch.float64), torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    matrix = to_hed @ torch.diag_embed(torch.as_tensor(alpha, dtype=torch.float64)) @ to_rgb
    return matrix.to(dtype), (torch.as_tensor(beta, dtype=torch.float64) @ to_rgb).to(dtype)


def hed_shift(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Each image's stains (H, E, D) scaled by its ``alpha`` and shifted by its ``beta`` (B x 3 each)."""
    matrix, offset = hed_matrices(alpha, beta, _float_dtype(images))
    return _by_chunks(images, [0], lambda x, out, rows: _hed_into(x, {0: (matrix[rows], offset[rows])}, out))[0]


def _hed_into(x: torch.Tensor, mixing: dict[int, tuple[torch.Tensor, torch.Tensor]], out: Levels) -> None:
    """exp(-OD') = exp(log x @ A - c): with the log image made once, a batched matrix product and an exponential."""
    batch, channels = x.shape[:2]
    log_x = torch.log(x.clamp(min=1e-6)).view(batch, channels, -1)  # -OD, floored as scikit-image's rgb2hed
    for level, (matrix, offset) in mixing.items():
        target = out[level].view(batch, channels, -1)
        torch.baddbmm(-offset.to(x)[:, :, None], matrix.transpose(1, 2).to(x), log_x, out=target)
        target.exp_().clamp_(max=1)


# ---- defocus and motion blur: sums of shifted copies ---------------------------------------------


def _disk_half(scale: float, size) -> int:
    """Half-width of the defocus kernel: MedMNIST-C's 17 x 17 (radius <= 8) scaled, inside the image."""
    return min(max(1, math.ceil(8 * scale)), min(size) - 1)


def _disk_kernel(radius: float, alias: float, half: int) -> np.ndarray:
    """MedMNIST-C's ``disk``: the aliased disk X^2 + Y^2 <= r^2 on [-half, half]^2, normalised, then
    ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias)`` over it (reflected without repeating the edge).

    Taps below 1e-7 (the alias blur leaves some of 1e-30; together under 1e-5 of a pixel value)
    are dropped, so a disk that covers one pixel is the image itself."""
    if half == 0:
        return np.ones((1, 1))
    grid = np.arange(-half, half + 1)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    gauss = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias**2)) if alias > 0 else np.array([0.0, 1.0, 0.0])
    gauss /= gauss.sum()
    padded = np.pad(disk, 1, mode="reflect")  # numpy's 'reflect' is OpenCV's BORDER_REFLECT_101
    rows = gauss[0] * padded[:-2] + gauss[1] * padded[1:-1] + gauss[2] * padded[2:]
    kernel = gauss[0] * rows[:, :-2] + gauss[1] * rows[:, 1:-1] + gauss[2] * rows[:, 2:]
    kernel[kernel < 1e-7] = 0
    return kernel.astype(np.float32).astype(np.float64)  # OpenCV's kernel is float32


def defocus_blur(images: torch.Tensor, radius: float, alias: float) -> torch.Tensor:
    """``cv2.filter2D(x, -1, disk(radius, alias))`` with reflected borders; radius and alias in pixels of these images."""
    half = _disk_half(min(images.shape[-2:]) / SIDE, images.shape[-2:])
    kernels = {0: _disk_kernel(radius, alias, half)}
    return _by_chunks(images, [0], lambda x, out, rows: _defocus_into(x, kernels, half, out), truncate=True)[0]


def _defocus_into(x: torch.Tensor, kernels: dict[int, np.ndarray], half: int, out: Levels) -> None:
    """A kernel's correlation as the sum of the padded image shifted by each tap, weighted."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (half,) * 4, mode="reflect") if half else x
    for level, kernel in kernels.items():
        (dy, dx, weight), *taps = [(int(dy), int(dx), float(kernel[dy, dx])) for dy, dx in zip(*np.nonzero(kernel))]
        torch.mul(padded[..., dy : dy + height, dx : dx + width], weight, out=out[level])
        for dy, dx, weight in taps:
            out[level].add_(padded[..., dy : dy + height, dx : dx + width], alpha=weight)
        if taps:
            out[level].clamp_(0, 1)


def _motion_width(radius: float) -> int:
    """ImageMagick's GetOptimalKernelWidth1D for a given radius."""
    return int(2 * math.ceil(radius) + 1) if radius > 1e-12 else 3


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """MotionBlurImage's weights: tap j of ``2 ceil(radius) + 1`` weighs exp(-j^2 / 2 sigma^2), normalised."""
    taps = np.arange(_motion_width(radius))
    weights = np.exp(-(taps**2) / (2 * max(sigma, 1e-12) ** 2))
    return weights / weights.sum()


def motion_offsets(angles: np.ndarray, taps: int) -> np.ndarray:
    """B x taps x 2: tap j reads (row, column) + (ceil(j sin a - 0.5), ceil(j cos a - 0.5)), as ImageMagick."""
    theta = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
    j = np.arange(taps)
    return np.stack([np.ceil(j * np.sin(theta) - 0.5), np.ceil(j * np.cos(theta) - 0.5)], -1).astype(np.int64)


def motion_blur(images: torch.Tensor, radius: float, sigma: float, angles) -> torch.Tensor:
    """ImageMagick's motion blur at each image's angle (degrees, |angle| <= 45); radius and sigma in pixels."""
    kernels = {0: motion_kernel(radius, sigma)}
    offsets = motion_offsets(np.asarray(angles), len(kernels[0]))
    return _by_chunks(images, [0], lambda x, out, rows: _motion_into(x, kernels, offsets[rows], out))[0]


def _motion_into(x: torch.Tensor, kernels: dict[int, np.ndarray], offsets: np.ndarray, out: Levels) -> None:
    """The levels share their taps (an image's angle is the same at every level): each tap is one copy
    of the batch, every image shifted by its own offset, added to every level that reaches it."""
    taps = max(len(k) for k in kernels.values())
    reach = int(np.abs(offsets[:, :taps, 0]).max()) if taps > 1 else 0
    # taps run right and up or down (|angle| <= 45): edge pixels repeat beyond, as ImageMagick's virtual pixels
    padded = F.pad(x, (0, taps - 1, reach, reach), mode="replicate")
    for level, kernel in kernels.items():
        torch.mul(x, float(kernel[0]), out=out[level])
    # A shifted copy is every image's rows of W pixels, each starting at its own element of the padded
    # slice: one index_select of a view whose k-th row starts at element k (overlapping rows, no copy)
    # gathers them all, 3x faster than a slice per image stacked.
    batch, channels, height, width = x.shape
    rows = padded.view(-1).as_strided((padded.numel() - width + 1, width), (1, 1))
    plane_rows = torch.arange(batch * channels, device=x.device).view(batch, channels, 1) * padded.shape[-2]
    first = (plane_rows + torch.arange(height, device=x.device)) * padded.shape[-1]  # B x C x H: tap 0, no shift
    shift = torch.as_tensor((offsets[:, :taps, 0] + reach) * padded.shape[-1] + offsets[:, :taps, 1], device=x.device)
    shifted = torch.empty_like(x)
    for j in range(1, taps):
        torch.index_select(rows, 0, (first + shift[:, j, None, None]).view(-1), out=shifted.view(-1, width))
        for level, kernel in kernels.items():
            if j < len(kernel):
                out[level].add_(shifted, alpha=float(kernel[j]))
    for level in kernels:
        out[level].clamp_(0, 1)


def _paste_white_into(x: torch.Tensor, code: torch.Tensor, alpha: torch.Tensor, keep: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """PIL's paste of a white layer through its alpha: x (1 - a) + a, with a and 1 - a looked up by each pixel's
    bubble code (B x H x W int32; :func:`bubble_codes`), not computed per pixel."""
    shape = (len(code), 1, *code.shape[1:])
    index = code.reshape(-1)
    return torch.mul(x, keep.index_select(0, index).view(shape), out=out).add_(alpha.index_select(0, index).view(shape))
