"""The medmnistc suite: the published severities, fidelity to MedMNIST-C's reference definitions
(PIL, OpenCV/scikit-image formulas, ImageMagick's motion blur) and to the documented distribution
of the random elements.

The reference package (``medmnistc`` on PyPI) resolves beside our pins, but it imports Wand, which
needs ImageMagick's shared library (not on our machines), and it pins scikit-image and OpenCV we do
not otherwise use: the references below are PIL itself where MedMNIST-C calls PIL, and the formulas
of its OpenCV, scikit-image and ImageMagick calls written out with numpy, scipy and matplotlib.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance
from scipy import ndimage

from medtune import corrupt_keyed as keyed
from medtune import corrupt_medmnistc as mc
from medtune.conditions import (
    ALL_CONDITIONS,
    CONDITIONS,
    MEDMNISTC_CORRUPTIONS,
    SUITES,
    augmentation_for,
    augmentation_pool,
    parse_condition,
)
from medtune.corrupt import apply, apply_many

MEDMNISTC = list(SUITES["medmnistc"])


def _images(batch=3, size=64, dtype=torch.uint8, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    width = width or size
    base = torch.rand(batch, 3, max(1, size // 8), max(1, width // 8), generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, width), mode="bilinear", align_corners=False)
    x = (0.75 * smooth + 0.25 * torch.rand(batch, 3, size, width, generator=g)).clamp(0, 1)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def _levels(corruption):
    return [c for c in MEDMNISTC if parse_condition(c)[0] == corruption]


# ---- the suite --------------------------------------------------------------------------------------


def test_the_published_pathmnist_severities():
    """medmnistc-api, medmnistc/corruptions/registry.py, CORRUPTIONS_DS['pathmnist'], copied by hand."""
    published = {
        "pixelate": [0.8, 0.6, 0.40, 0.30, 0.25],
        "jpeg_compression": [50, 30, 15, 10, 7],
        "defocus_blur": [(3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)],
        "motion_blur": [(5, 5), (10, 5), (15, 5), (15, 8), (15, 12)],
        "brightness_up": [1.1, 1.15, 1.2, 1.22, 1.25],
        "brightness_down": [0.85, 0.80, 0.75, 0.72, 0.70],
        "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
        "contrast_down": [0.8, 0.7, 0.6, 0.55, 0.5],
        "saturate": [0.05, 0.10, 0.15, 0.20, 0.25],
        "stain_deposit": [1, 2, 3, 4, 5],
        "bubble": [(7, 15), (10, 15), (12, 15), (15, 20), (17, 25)],
    }
    assert {c: list(v) for c, v in mc.MEDMNISTC_SEVERITIES.items() if c != "hed_shift"} == published
    assert list(MEDMNISTC_CORRUPTIONS) == [*published, "hed_shift"]
    assert len(MEDMNISTC) == 60 == len(set(MEDMNISTC)) and MEDMNISTC[0] == "pixelate-1"
    # names unique across suites, PathCLIP's 29 untouched
    assert not set(MEDMNISTC) & set(CONDITIONS) and ALL_CONDITIONS == CONDITIONS + MEDMNISTC
    assert [parse_condition(c) for c in ("bubble-5", "hed_shift-1")] == [("bubble", 5), ("hed_shift", 1)]
    for bad in ("pixelate-0", "pixelate-6", "jpeg-1", "bubble--1"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_condition(bad)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_contract_every_condition(dtype):
    # at 224 px the lengths are MedMNIST-C's own, and every level changes the image
    x = _images(batch=2, size=224, dtype=dtype)
    for condition, y in apply_many(x, MEDMNISTC, keys=[11, 12]):
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, condition
        if dtype.is_floating_point:
            assert 0 <= float(y.min()) and float(y.max()) <= 1, condition
        assert not torch.equal(y, x), condition


@pytest.mark.parametrize("size", [(4, 4), (33, 47), (64, 64)])
def test_small_and_odd_images_survive(size):
    x = _images(batch=2, size=size[0], width=size[1], dtype=torch.float32)
    for condition, y in apply_many(x, MEDMNISTC):
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1, condition


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_an_image_is_corrupted_alike_in_any_batch(dtype):
    x = _images(batch=4, size=48, dtype=dtype)
    keys = [5, 900, 31, 5]
    batched = dict(apply_many(x, MEDMNISTC, keys=keys))
    for i in range(len(x)):
        for condition, y in apply_many(x[i : i + 1], MEDMNISTC, keys=keys[i : i + 1]):
            assert torch.equal(y[0], batched[condition][i]), condition
    # the same key draws the same angle, marks, bubbles and stain shift
    same = x[:1].expand(2, -1, -1, -1).contiguous()
    for condition in ("motion_blur-3", "stain_deposit-4", "bubble-2", "hed_shift-5"):
        y = apply(same, condition, keys=[77, 77])
        assert torch.equal(y[0], y[1]) and not torch.equal(y[0], apply(same[:1], condition, keys=[78])[0]), condition


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_batch_made_in_several_slices_is_corrupted_as_its_images_alone(dtype):
    # on a CPU a batch is corrupted slice by slice (32 images of 40 x 50 px, 16 for the blurs);
    # every image of every slice must come out as it does on its own
    x = _images(batch=37, size=40, width=50, dtype=dtype, seed=3)
    keys = [7 * i + 1 for i in range(37)]
    conditions = [f"{c}-{level}" for c in ("motion_blur", "defocus_blur", "bubble", "stain_deposit", "saturate") for level in (1, 5)]
    batched = dict(apply_many(x, conditions, keys=keys))
    for i in (0, 15, 16, 17, 31, 32, 36):
        for condition, y in apply_many(x[i : i + 1], conditions, keys=keys[i : i + 1]):
            assert torch.equal(y[0], batched[condition][i]), (condition, i)


def test_many_conditions_give_what_apply_gives():
    x = _images(batch=3, size=40, dtype=torch.float32)
    keys = [3, 1, 4]
    order = list(reversed(MEDMNISTC)) + ["motion_blur-2", "jpeg_compression-1", "blur-1", "augmented-medmnistc"]
    for condition, got in apply_many(x, order, keys=keys):
        assert torch.equal(got, apply(x, condition, keys=keys)), condition


def test_augmented_medmnistc_picks_a_condition_of_the_suite_per_image():
    pool = augmentation_pool("augmented-medmnistc")
    assert pool == SUITES["medmnistc"] and augmentation_pool("augmented") == SUITES["pathclip"]
    assert len(augmentation_pool("augmented-all")) == 88 and augmentation_pool("pixelate-1") is None
    picked = [augmentation_for(k, pool) for k in range(600)]
    assert set(picked) <= set(MEDMNISTC) and len(set(picked)) > 50
    x = _images(batch=5, size=32, dtype=torch.float32)
    keys = list(range(20, 25))
    batched = apply(x, "augmented-medmnistc", keys=keys)
    for i, key in enumerate(keys):
        assert torch.equal(batched[i : i + 1], apply(x[i : i + 1], augmentation_for(key, pool), keys=[key]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_images_device():
    x = _images(batch=3, size=64, dtype=torch.float32)
    for (condition, y), (_, expected) in zip(apply_many(x.cuda(), MEDMNISTC), apply_many(x, MEDMNISTC)):
        assert y.is_cuda, condition
        torch.testing.assert_close(y.cpu(), expected, atol=2e-3, rtol=0, msg=condition)


# ---- deterministic corruptions against the reference definitions ------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (50, 44)])
def test_pixelate_is_pils_box_resize(size):
    height, width = size
    x = _images(batch=3, size=height, width=width)
    for level, factor in enumerate(mc.MEDMNISTC_SEVERITIES["pixelate"], start=1):
        small = (int(width * factor), int(height * factor))
        expected = torch.stack([_tensor(_pil(im).resize(small, Image.BOX).resize((width, height), Image.BOX)) for im in x])
        assert torch.equal(apply(x, f"pixelate-{level}"), expected), level  # uint8: PIL's 8-bit rounding too
        # float images: PIL's float ('F') resampler, channel by channel
        channels = [
            np.array(Image.fromarray(im.numpy(), mode="F").resize(small, Image.BOX).resize((width, height), Image.BOX))
            for im in (x.float() / 255).reshape(-1, height, width)
        ]
        torch.testing.assert_close(apply(x.float() / 255, f"pixelate-{level}"), torch.tensor(np.stack(channels)).view_as(x).float(), atol=1e-6, rtol=0)


def test_jpeg_is_pils_jpeg_byte_for_byte():
    x = _images(batch=3, size=64)
    for level, quality in enumerate(mc.MEDMNISTC_SEVERITIES["jpeg_compression"], start=1):
        expected = []
        for im in x:
            buffer = io.BytesIO()
            _pil(im).save(buffer, "JPEG", quality=quality)
            expected.append(_tensor(Image.open(buffer)))
        expected = torch.stack(expected)
        assert torch.equal(apply(x, f"jpeg_compression-{level}"), expected), level
        # float images are saved as 8-bit images are: the same round trip, over 255
        assert torch.equal(apply(x.float() / 255, f"jpeg_compression-{level}"), expected.float() / 255), level


@pytest.mark.parametrize("corruption, enhancer", [
    ("brightness_up", ImageEnhance.Brightness), ("brightness_down", ImageEnhance.Brightness),
    ("contrast_up", ImageEnhance.Contrast), ("contrast_down", ImageEnhance.Contrast),
])
def test_brightness_and_contrast_are_pils_image_enhance(corruption, enhancer):
    x = _images(batch=4, size=48)
    x[0] = (x[0].float() * 0.3).to(torch.uint8)  # a dark image: its mean grey differs
    for level, factor in enumerate(mc.MEDMNISTC_SEVERITIES[corruption], start=1):
        expected = torch.stack([_tensor(enhancer(_pil(im)).enhance(factor)) for im in x])
        assert torch.equal(apply(x, f"{corruption}-{level}"), expected), level
        # float images: the same blend, unquantised; PIL truncates, so it lies below by less than one level
        gap = apply(x.float() / 255, f"{corruption}-{level}") - expected.float() / 255
        assert float(gap.min()) > -1e-6 and float(gap.max()) < 1 / 255 + 1e-6, level


def _saturate_reference(rgb: np.ndarray, delta: float) -> np.ndarray:
    """MedMNIST-C's Saturate with scikit-image's rgb2hsv / hsv2rgb, here matplotlib's (the same algorithm)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(rgb)
    hsv[..., 1] = np.clip(hsv[..., 1] + delta, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1)


def test_saturate_is_skimages_hsv_saturation():
    x = _images(batch=3, size=40)
    x[0, :, :5] = x[0, :1, :5]  # grey pixels: hue 0, so they turn red as in scikit-image
    x[1, :, :3] = 0  # black stays black
    for level, delta in enumerate(mc.MEDMNISTC_SEVERITIES["saturate"], start=1):
        reference = np.stack([_saturate_reference(im.permute(1, 2, 0).numpy() / 255.0, delta) for im in x])
        reference = torch.tensor(reference).permute(0, 3, 1, 2)
        torch.testing.assert_close(apply(x.double() / 255, f"saturate-{level}"), reference, atol=1e-9, rtol=0)
        # uint8: astype(np.uint8) truncates; float error may move a value by one level
        truncated = (reference * 255).floor().to(torch.int16)
        assert int((apply(x, f"saturate-{level}").to(torch.int16) - truncated).abs().max()) <= 1, level
    assert torch.equal(apply(x, "saturate-5")[1, :, :3], torch.zeros(3, 3, 40, dtype=torch.uint8))
    assert (apply(x, "saturate-5")[0, 0, :5] > apply(x, "saturate-5")[0, 1, :5]).all()  # grey turned red


def _disk_reference(radius: float, alias: float) -> np.ndarray:
    """MedMNIST-C's disk(): an aliased disk on [-8, 8]^2, normalised, under cv2.GaussianBlur((3, 3), alias)
    (a 3-tap Gaussian per axis, the kernel image's borders reflected without their edge)."""
    grid = np.arange(-8, 9)
    disk = (grid[None, :] ** 2 + grid[:, None] ** 2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias**2))
    taps /= taps.sum()
    return ndimage.correlate1d(ndimage.correlate1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")


@pytest.mark.parametrize("size", [224, 64])
def test_defocus_blur_is_opencvs_filter2d_with_the_aliased_disk(size):
    x = _images(batch=2, size=size)
    scale = size / 224  # MedMNIST-C's pixels are those of 224 px images
    for level, (radius, alias) in enumerate(mc.MEDMNISTC_SEVERITIES["defocus_blur"], start=1):
        kernel = _disk_reference(radius * scale, alias * scale)
        # cv2.filter2D: correlation, borders BORDER_REFLECT_101 (scipy's 'mirror')
        reference = np.stack([[ndimage.correlate(c / 255.0, kernel, mode="mirror") for c in im.numpy()] for im in x])
        reference = torch.tensor(np.clip(reference, 0, 1))
        torch.testing.assert_close(apply(x.double() / 255, f"defocus_blur-{level}"), reference, atol=2e-6, rtol=0)
        truncated = (reference * 255).floor().to(torch.int16)
        assert int((apply(x, f"defocus_blur-{level}").to(torch.int16) - truncated).abs().max()) <= 1, level


def test_hed_shift_with_no_shift_gives_the_image_back():
    """Unmixing and remixing with the same matrices is exact (no clamp of negative stain, unlike rgb2hed)."""
    x = _images(batch=2, size=32, dtype=torch.float64).clamp(min=1e-6)
    torch.testing.assert_close(mc.hed_shift(x, torch.ones(2, 3), torch.zeros(2, 3)), x, atol=1e-12, rtol=0)


# ---- the random elements: their documented distributions -----------------------------------------


def _motion_reference(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage, pixel by pixel: GetOptimalKernelWidth1D, GetMotionBlurKernel, offsets
    ceil(j * cos|sin(angle) - 0.5), virtual pixels beyond the edge repeating the edge."""
    width = int(2 * np.ceil(radius) + 1)
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma * sigma)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    rad = np.deg2rad(angle)
    _, height, cols = image.shape
    ys, xs = np.mgrid[0:height, 0:cols]
    out = np.zeros_like(image, dtype=np.float64)
    for j in range(width):
        dx, dy = int(np.ceil(j * np.cos(rad) - 0.5)), int(np.ceil(j * np.sin(rad) - 0.5))
        out += kernel[j] * image[:, np.clip(ys + dy, 0, height - 1), np.clip(xs + dx, 0, cols - 1)]
    return out


@pytest.mark.parametrize("size", [224, 64])
def test_motion_blur_is_imagemagicks_at_an_angle_drawn_per_image(size):
    keys = [0, 1, 2]
    x = _images(batch=3, size=size, dtype=torch.float64)
    angles = keyed.motion_angles(keys)
    scale = size / 224
    for level, (radius, sigma) in enumerate(mc.MEDMNISTC_SEVERITIES["motion_blur"], start=1):
        expected = torch.tensor(np.stack([_motion_reference(im.numpy(), radius * scale, sigma * scale, a) for im, a in zip(x, angles)]))
        torch.testing.assert_close(apply(x, f"motion_blur-{level}", keys=keys), expected, atol=1e-9, rtol=0)
    # uint8: rounded, as ImageMagick writes its 8-bit PNG
    y = apply((x * 255).round().to(torch.uint8), "motion_blur-5", keys=keys)
    expected = np.stack([_motion_reference(im.numpy() * 255, 15 * scale, 12 * scale, a) for im, a in zip((x * 255).round() / 255, angles)])
    assert int((y.to(torch.int16) - torch.tensor(expected).round().to(torch.int16)).abs().max()) <= 1


def test_motion_angles_are_uniform_in_45_degrees_either_way():
    angles = keyed.motion_angles(range(5000))
    assert angles.min() >= -45 and angles.max() <= 45
    assert abs(angles.mean()) < 3 * 90 / np.sqrt(12) / np.sqrt(5000)
    assert angles.std() == pytest.approx(90 / np.sqrt(12), rel=0.03)
    assert np.array_equal(keyed.motion_angles([7, 8]), keyed.motion_angles(range(10))[7:9])


def test_hed_shift_draws_alpha_around_one_and_beta_around_zero_with_sigma():
    draws = keyed.hed_draws(list(range(4000))).numpy()
    assert np.abs(draws.mean(axis=0)).max() < 4 / np.sqrt(4000)
    assert np.allclose(draws.std(axis=0), 1, atol=0.05)
    assert np.abs(np.corrcoef(draws.T) - np.eye(6)).max() < 0.06  # six independent draws per image
    for level, sigma in enumerate(mc.MEDMNISTC_SEVERITIES["hed_shift"], start=1):
        alpha, beta = 1 + sigma * draws[:, :3], sigma * draws[:, 3:]
        assert alpha.mean() == pytest.approx(1, abs=4 * sigma / np.sqrt(4000)) and alpha.std() == pytest.approx(sigma, rel=0.05)
        assert beta.std() == pytest.approx(sigma, rel=0.05), level


def test_hed_shift_is_tellez_stain_jitter_in_skimages_hed_space():
    keys = [4, 5, 6]
    x = _images(batch=3, size=32, dtype=torch.float64)
    rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])  # skimage.color.rgb_from_hed
    draws = keyed.hed_draws(keys).numpy()
    for level, sigma in enumerate(mc.MEDMNISTC_SEVERITIES["hed_shift"], start=1):
        expected = []
        for im, z in zip(x.numpy(), draws):
            od = -np.log(np.maximum(im.transpose(1, 2, 0), 1e-6))
            stains = od @ np.linalg.inv(rgb_from_hed)
            shifted = stains * (1 + sigma * z[:3]) + sigma * z[3:]
            expected.append(np.clip(np.exp(-shifted @ rgb_from_hed), 0, 1).transpose(2, 0, 1))
        torch.testing.assert_close(apply(x, f"hed_shift-{level}", keys=keys), torch.tensor(np.stack(expected)), atol=1e-9, rtol=0)
    # stronger levels move the colours further
    change = [float((apply(x, c, keys=keys) - x).abs().mean()) for c in _levels("hed_shift")]
    assert change == sorted(change)


def test_stain_deposits_are_one_to_level_black_blobs_inside_the_margin():
    keys = list(range(600))
    counts = keyed.stain_counts(keys)
    for level in range(1, 6):
        assert set(counts[:, level - 1]) == set(range(1, level + 1))  # random.randint(1, level)
        assert counts[:, level - 1].mean() == pytest.approx((level + 1) / 2, abs=0.15)
    assert (np.diff(counts, axis=1) >= 0).all()  # one draw per image: more marks at higher levels
    x = _images(batch=40, size=224)
    for level in (1, 3, 5):
        y = apply(x, f"stain_deposit-{level}", keys=keys[:40])
        inked = (y != x).any(dim=1)
        assert (y.permute(1, 0, 2, 3)[:, inked] == 0).all()  # ink is black, the rest untouched
        side = keyed.INK_SIDE[level]
        corners = keyed.stain_marks(keys[:40], side, 224, 224)["corner"]
        assert corners.min() >= 10 and corners.max() <= 224 - side - 10
        if level == 1:  # one mark: its blob fills about 60 % of its box, as MedMNIST-C's inks do (47-78 %)
            fill = inked.flatten(1).sum(1).numpy() / side**2
            assert 0.4 < fill.min() and fill.max() < 0.85 and fill.mean() == pytest.approx(0.6, abs=0.07)
            for image, (left, top) in zip(inked, corners[:, 0]):
                rows, cols = torch.nonzero(image, as_tuple=True)
                assert rows.min() >= top and rows.max() < top + side and cols.min() >= left and cols.max() < left + side
    # levels 1-4 share their ink size: each level's marks are the first of the next's
    masks = [(apply(x, f"stain_deposit-{lv}", keys=keys[:40]) != x).any(dim=1) for lv in range(1, 5)]
    for fewer, more in zip(masks, masks[1:]):
        assert not (fewer & ~more).any()


def _bubbles_reference(image: Image.Image, drawn: dict, index: int) -> Image.Image:
    """MedMNIST-C's Bubble.apply with its random draws replaced by ours: PIL ellipses on an RGBA layer, pasted."""
    layer = Image.new("RGBA", image.size, (255, 255, 255, 0))
    draw = ImageDraw.Draw(layer)
    for k in range(drawn["count"][index]):
        radius, (x, y) = int(drawn["radius"][index, k]), drawn["centre"][index, k]
        draw.ellipse((x - radius - 2, y - radius - 2, x + radius + 2, y + radius + 2), fill=(255, 255, 255, 130))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255, 100))
    out = image.copy()
    out.paste(layer, (0, 0), layer)
    return out


def test_bubbles_are_drawn_as_medmnistc_draws_them():
    keys = list(range(800))
    for max_radius, max_count in mc.MEDMNISTC_SEVERITIES["bubble"]:
        drawn = keyed.bubbles(keys, max_radius, max_count, 224, 224)
        assert set(drawn["count"]) == set(range(7, max_count + 1))  # random.randint(7, max_bubbles)
        assert drawn["count"].mean() == pytest.approx((7 + max_count) / 2, abs=0.5)
        assert set(drawn["radius"].ravel()) == set(range(3, max_radius + 1))  # random.randint(3, max_radius)
        low, high = drawn["radius"][..., None], 224 - drawn["radius"][..., None]
        assert ((drawn["centre"] >= low) & (drawn["centre"] <= high)).all()
    x = _images(batch=4, size=224)
    for level, (max_radius, max_count) in enumerate(mc.MEDMNISTC_SEVERITIES["bubble"], start=1):
        drawn = keyed.bubbles(keys[:4], max_radius, max_count, 224, 224)
        y = apply(x, f"bubble-{level}", keys=keys[:4])
        expected = torch.stack([_tensor(_bubbles_reference(_pil(im), drawn, i)) for i, im in enumerate(x)])
        differ = (y != expected).any(dim=1)
        assert float(differ.float().mean()) < 0.005, level  # only rim pixels of PIL's rasterised ellipses differ
    # float images: a pixel is x, or x (1 - a) + a with a = 100/255 in a bubble, 130/255 on its ring
    xf = x.float() / 255
    alpha = ((apply(xf, "bubble-3", keys=keys[:4]) - xf) / (1 - xf)).flatten()
    alpha = alpha[(1 - xf).flatten() > 0.05]
    for value in (0, 100 / 255, 130 / 255):
        assert ((alpha - value).abs() < 1e-5).any()
    assert (((alpha - 0).abs() < 1e-5) | ((alpha - 100 / 255).abs() < 1e-5) | ((alpha - 130 / 255).abs() < 1e-5)).all()


def test_every_condition_takes_images_in_any_memory_layout():
    # a gallery hands over HWC images permuted to CHW: the same pixels, other strides
    generator = torch.Generator().manual_seed(5)
    hwc = torch.rand(3, 24, 20, 3, generator=generator)
    permuted = hwc.permute(0, 3, 1, 2)
    assert not permuted.is_contiguous()
    for condition in ALL_CONDITIONS:
        assert torch.equal(apply(permuted, condition, keys=[4, 5, 6]), apply(permuted.contiguous(), condition, keys=[4, 5, 6])), condition
