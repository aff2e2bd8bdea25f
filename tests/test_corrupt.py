"""Corruptions keep the tensor contract and get stronger with severity."""

import re

import numpy as np
import pytest
import torch

from medtune import corrupt
from medtune.corrupt import CONDITIONS, SEVERITY_LABEL, apply, parse_condition


def _images(batch=3, size=48, dtype=torch.float32, low=0.0, high=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth structure plus noise, so both colour and detail statistics have something to act on.
    base = torch.rand(batch, 3, max(1, size // 8), max(1, size // 8), generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = low + (high - low) * (0.7 * smooth + 0.3 * torch.rand(batch, 3, size, size, generator=g))
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


def _laplacian_energy(x):
    x = x.double().mean(dim=1)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(lap.abs().mean())


def _levels(corruption):
    return [c for c in CONDITIONS if c.startswith(corruption + "-")]


def test_condition_table():
    assert len(CONDITIONS) == 29 == len(set(CONDITIONS))
    assert CONDITIONS[0] == "clean"
    assert CONDITIONS[1:5] == ["brightness--2", "brightness--1", "brightness-1", "brightness-2"]
    order = list(dict.fromkeys(parse_condition(c)[0] for c in CONDITIONS[1:]))
    assert order == ["brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup"]
    assert [SEVERITY_LABEL[c] for c in _levels("hue")] == [-2, -1, 1, 2]
    assert [SEVERITY_LABEL[c] for c in _levels("markup")] == [1, 2, 3, 4]
    assert SEVERITY_LABEL["clean"] == 0
    for level, factor in corrupt.COLOUR_FACTORS.items():
        assert corrupt.HUE_SHIFTS[level] == pytest.approx((factor - 1) / 4)


@pytest.mark.parametrize(
    "name, expected",
    [("clean", ("clean", 0)), ("brightness--2", ("brightness", -2)), ("brightness-1", ("brightness", 1)),
     ("blur-3", ("blur", 3)), ("markup-4", ("markup", 4)), ("hue--1", ("hue", -1))],
)
def test_parse_condition(name, expected):
    assert parse_condition(name) == expected


@pytest.mark.parametrize(
    "bad", ["blur-0", "blur-5", "blur--1", "brightness-3", "brightness-0", "fog-1", "blur", "blur-+1",
            "blur-01", "Clean", "", "blur-x", "markup-1.0"],
)
def test_parse_condition_rejects(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))) as err:
        parse_condition(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_no_op_is_exact_identity(dtype):
    x = _images(dtype=dtype)
    assert apply(x, "clean") is x
    for fn in (corrupt.brightness, corrupt.contrast, corrupt.saturation, corrupt.hue):
        assert torch.equal(fn(x, 1.0), x)
    assert torch.equal(corrupt.blur(x, 0), x)
    assert torch.equal(corrupt.resolution(x, 1.0), x)
    assert torch.equal(corrupt.markup(x, 0), x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_contract_every_condition(dtype):
    x = _images(batch=2, size=33, dtype=dtype)  # odd size: blur kernels get capped
    for condition in CONDITIONS:
        y = apply(x, condition)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, condition
        if dtype.is_floating_point:
            assert 0 <= float(y.min()) and float(y.max()) <= 1, condition
        if condition != "clean":
            assert not torch.equal(y, x), condition


def test_tiny_images_survive():
    x = _images(batch=1, size=4)
    for condition in CONDITIONS:
        assert apply(x, condition).shape == x.shape


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        apply(torch.rand(3, 8, 8), "blur-1")
    with pytest.raises(ValueError, match="int64"):
        apply(torch.zeros(1, 3, 8, 8, dtype=torch.int64), "blur-1")
    with pytest.raises(ValueError, match="2 integers"):
        apply(_images(batch=2), "markup-1", keys=[1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        apply(_images(batch=2), "markup-1", keys=[1, -2])


def test_brightness_scales_mean():
    # Values kept below 1/1.6 so no level clips and the mean scales exactly by the factor.
    x = _images(low=0.05, high=0.6)
    for condition in _levels("brightness"):
        factor = corrupt.COLOUR_FACTORS[SEVERITY_LABEL[condition]]
        assert float(apply(x, condition).mean()) == pytest.approx(factor * float(x.mean()), rel=1e-5)


def test_contrast_orders_std():
    x = _images(low=0.3, high=0.7)
    stds = [float(apply(x, c).std()) for c in ["contrast--2", "contrast--1", "clean", "contrast-1", "contrast-2"]]
    assert stds == sorted(stds) and len(set(stds)) == 5


def test_saturation_orders_channel_spread():
    x = _images(low=0.3, high=0.7)

    def spread(y):
        return float((y.amax(dim=1) - y.amin(dim=1)).mean())

    spreads = [spread(apply(x, c)) for c in ["saturation--2", "saturation--1", "clean", "saturation-1", "saturation-2"]]
    assert spreads == sorted(spreads) and len(set(spreads)) == 5


def test_hue_grows_with_level_and_spares_grey():
    x = _images()
    change = {c: float((apply(x, c) - x).abs().mean()) for c in _levels("hue")}
    assert change["hue--2"] > change["hue--1"] > 0 and change["hue-2"] > change["hue-1"] > 0
    # Opposite shifts undo each other, up to float error.
    torch.testing.assert_close(corrupt.hue(corrupt.hue(x, 1.2), 0.8), x, atol=1e-4, rtol=0)
    grey = x.mean(dim=1, keepdim=True).expand_as(x).contiguous()
    torch.testing.assert_close(apply(grey, "hue-2"), grey, atol=1e-5, rtol=0)


@pytest.mark.parametrize("corruption", ["blur", "resolution"])
def test_detail_loss_monotone(corruption):
    x = _images(size=64)
    energy = [_laplacian_energy(x)] + [_laplacian_energy(apply(x, c)) for c in _levels(corruption)]
    assert all(a > b for a, b in zip(energy, energy[1:])), energy


def test_markup_grows_and_nests():
    x = _images(batch=6, size=64)
    masks = [(apply(x, c) != x).any(dim=1) for c in _levels("markup")]
    counts = [int(m.sum()) for m in masks]
    assert 0 < counts[0] < counts[-1] and counts == sorted(counts), counts
    for fewer, more in zip(masks, masks[1:]):
        assert not (fewer & ~more).any()  # markup-n strokes are the first n of markup-(n+1)
    # Pen strokes are thin: even four cover a minority of the image.
    assert counts[-1] < 0.5 * masks[-1].numel()


def test_markup_keyed_determinism():
    x = _images(batch=1, size=48).expand(3, -1, -1, -1).contiguous()
    y = apply(x, "markup-3", keys=[5, 5, 6])
    assert torch.equal(y[0], y[1])
    assert not torch.equal(y[0], y[2])
    assert torch.equal(apply(x, "markup-3", keys=torch.tensor([5, 5, 6])), y)
    assert torch.equal(apply(x, "markup-3"), apply(x, "markup-3", keys=[0, 1, 2]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batch_equals_single_images(dtype):
    x = _images(batch=3, size=40, dtype=dtype)
    keys = [17, 3, 250]
    for condition in CONDITIONS:
        batched = apply(x, condition, keys=keys)
        single = torch.cat([apply(x[i : i + 1], condition, keys=[keys[i]]) for i in range(len(x))])
        assert torch.equal(batched, single), condition


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_images_device():
    x = _images(batch=2, size=40)
    for condition in CONDITIONS:
        y = apply(x.cuda(), condition)
        assert y.is_cuda
        torch.testing.assert_close(y.cpu(), apply(x, condition), atol=2e-3, rtol=0)


def test_augmented_gives_each_image_its_own_fixed_corruption():
    from medtune.conditions import CONDITIONS, augmentation_for

    picked = [augmentation_for(k) for k in range(200)]
    assert set(picked) <= set(CONDITIONS[1:]) and len(set(picked)) > 20
    x = torch.rand(6, 3, 24, 24)
    batched = apply(x, "augmented", keys=list(range(10, 16)))
    single = torch.cat([apply(x[i : i + 1], "augmented", keys=[10 + i]) for i in range(6)])
    assert torch.equal(batched, single)
    for i in range(6):
        assert torch.equal(batched[i : i + 1], apply(x[i : i + 1], augmentation_for(10 + i), keys=[10 + i]))


def _pen_one_key(key):
    """One key's ink and curves, computed on their own as the first markup did (the strokes must not change)."""
    rng = np.random.default_rng([corrupt._MARKUP_SALT, key])
    ink = corrupt.INKS[int(rng.integers(len(corrupt.INKS)))]
    u = rng.random((corrupt.MAX_STROKES, 5))
    start = 0.1 + 0.8 * u[:, 0:2]
    angle = 2 * np.pi * u[:, 2]
    length = 0.25 + 0.35 * u[:, 3]
    bend = -0.4 + 0.8 * u[:, 4]
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    end = start + length[:, None] * direction
    control = (start + end) / 2 + (bend * length)[:, None] * normal
    t = np.linspace(0, 1, corrupt._BEZIER_SEGMENTS + 1)[None, :, None]
    return ink, (1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * control[:, None] + t**2 * end[:, None]


def _markup_full_grid(images, strokes, keys):
    """The plain rasteriser: every chord against every pixel. The windowed one must match it exactly."""
    batch, _, height, width = images.shape
    inks, curves = zip(*(_pen_one_key(k) for k in keys))
    ink = torch.tensor(inks, dtype=torch.float32)[:, :, None, None]
    points = torch.tensor(np.stack(curves)[:, :strokes], dtype=torch.float32) * torch.tensor([width, height], dtype=torch.float32)
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    dist2 = torch.full((batch, height, width), float("inf"))
    for s in range(strokes):
        for j in range(corrupt._BEZIER_SEGMENTS):
            a, b = points[:, s, j], points[:, s, j + 1]
            abx, aby = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
            tx = xs[None, None, :] - a[:, 0, None, None]
            ty = ys[None, :, None] - a[:, 1, None, None]
            t = ((tx * abx + ty * aby) / (abx * abx + aby * aby).clamp_min(1e-12)).clamp(0, 1)
            dist2 = torch.minimum(dist2, (tx - t * abx) ** 2 + (ty - t * aby) ** 2)
    half_width = max(2.0, corrupt.STROKE_WIDTH * min(height, width)) / 2
    alpha = corrupt.INK_OPACITY * (half_width + 0.5 - dist2.sqrt()).clamp(0, 1)[:, None]
    drawn = images.float() / 255 * (1 - alpha) + ink * alpha
    out = (drawn * 255).round().clamp(0, 255).to(torch.uint8)
    return torch.where(alpha > 0, out, images)


@pytest.mark.parametrize("size", [(64, 64), (37, 90), (224, 224)])
def test_markup_window_matches_full_grid(size):
    height, width = size
    x = _images(batch=5, size=max(size), dtype=torch.uint8)[:, :, :height, :width].contiguous()
    keys = [0, 7, 41, 1000, 123456]
    for strokes in (1, 4):
        assert torch.equal(corrupt.markup(x, strokes, keys), _markup_full_grid(x, strokes, keys))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_a_batch_made_in_several_slices_is_corrupted_as_its_images_alone(dtype):
    # hue and markup work slice by slice on a CPU (16 images of 64 px); each image must come out as on its own
    x = _images(batch=35, size=64, dtype=dtype, seed=2)
    keys = [3 * i + 2 for i in range(35)]
    conditions = ["hue--2", "hue-2", "markup-1", "markup-4"]
    batched = dict(corrupt.apply_many(x, conditions, keys=keys))
    for i in (0, 15, 16, 31, 32, 34):
        for condition, y in corrupt.apply_many(x[i : i + 1], conditions, keys=keys[i : i + 1]):
            assert torch.equal(y[0], batched[condition][i]), (condition, i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("sigma", [1, 4])
def test_separable_blur_matches_torchvision(dtype, sigma):
    import math

    import torchvision.transforms.v2.functional as TF

    x = _images(batch=2, size=40, dtype=dtype)[:, :, :, :33]
    size = 2 * math.ceil(3 * sigma) + 1
    expected = TF.gaussian_blur(x, [min(size, 33), min(size, 39)], [float(sigma), float(sigma)])
    got = corrupt.blur(x, sigma)
    assert got.dtype == dtype
    if dtype == torch.uint8:
        assert (got.int() - expected.int()).abs().max() <= 1  # rounding at .5 may differ by one level
    else:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("shift", [-0.5, -0.15, 0.05, 0.15, 0.5])
def test_hue_matches_torchvision(dtype, shift):
    import torchvision.transforms.v2.functional as TF

    x = _images(batch=2, size=40, dtype=dtype)
    x[0, :, :4] = x[0, :1, :4]  # grey pixels: no hue to shift
    x[1, 1, :4] = x[1, 0, :4]  # ties between red and green at the top
    got = corrupt.hue(x, 1 + 4 * shift)
    expected = TF.adjust_hue(x, shift)
    if dtype == torch.uint8:
        assert (got.int() - expected.int()).abs().max() <= 1
    else:
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_saturation_is_torchvisions_to_the_bit(dtype):
    import torchvision.transforms.v2.functional as TF

    # 37 images of 40 x 52 px: several of the slices the blend is made in
    x = _images(batch=37, size=52, dtype=dtype, seed=4)[..., :40, :]
    for factor in (0.0, 0.4, 0.8, 1.2, 1.6, 3.0):
        assert torch.equal(corrupt.saturation(x, factor), TF.adjust_saturation(x, factor)), factor


@pytest.mark.parametrize("scale", [0.8, 0.4, 0.2])
def test_resolution_matrices_match_torchvision_resizes(scale):
    import torchvision.transforms.v2.functional as TF

    x = _images(batch=2, size=64)[:, :, :, :50].contiguous()
    small = [round(64 * scale), round(50 * scale)]
    bilinear = TF.InterpolationMode.BILINEAR
    expected = TF.resize(TF.resize(x, small, interpolation=bilinear, antialias=True), [64, 50], interpolation=bilinear, antialias=True)
    torch.testing.assert_close(corrupt.resolution(x, scale), expected.clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_many_conditions_give_what_apply_gives(dtype):
    x = _images(batch=4, dtype=dtype)
    keys = [3, 1, 4, 15]
    # any order, repeats included: markup-2 after markup-4 reuses the strokes already drawn
    order = list(reversed(CONDITIONS)) + ["markup-2", "hue-1", "augmented"]
    for condition, got in corrupt.apply_many(x, order, keys=keys):
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(got, apply(x, condition, keys=keys)), condition


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_each_batch_many_conditions_give_is_the_callers_to_overwrite(dtype, contiguous):
    """encode_images normalises each corrupted batch over itself: nothing a later condition reads
    (the input, its contiguous working copy, a level made beside another, cached strokes or HSV
    parts) may be what was handed out."""
    from medtune.conditions import ALL_CONDITIONS

    x = _images(batch=3, size=40, dtype=dtype, seed=7)
    x = x if contiguous else x.transpose(-1, -2)  # a permuted view: the corruptions work on a copy
    keys = [5, 9, 2]
    order = [*ALL_CONDITIONS, "markup-2", "hue-1", "augmented", "augmented-medmnistc", "augmented-all"]
    untouched = x.clone()
    expected = {c: apply(x, c, keys=keys) for c in order}
    for condition, got in corrupt.apply_many(x, order, keys=keys):
        assert torch.equal(got, expected[condition]), condition
        if got.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            got.fill_(0 if dtype == torch.uint8 else float("nan"))  # what a caller may do with its own batch
        else:
            assert got is x and condition in ("clean",), condition  # a no-op hands back the input itself
    assert torch.equal(x, untouched)


def test_many_conditions_share_the_work_of_levels(monkeypatch):
    calls = {"hue": 0, "stroke": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(corrupt, "_hue_parts", counted("hue", corrupt._hue_parts))
    monkeypatch.setattr(corrupt, "_stroke_distance2", counted("stroke", corrupt._stroke_distance2))
    for _ in corrupt.apply_many(_images(batch=2), CONDITIONS):
        pass
    assert calls == {"hue": 1, "stroke": corrupt.MAX_STROKES}  # not 4 decompositions and 1 + 2 + 3 + 4 strokes


def test_augmentation_choice_is_keyed_by_name_and_stable_when_the_list_grows():
    """Adding a condition to the pool moves only the images that now pick it; reordering moves none."""
    from collections import Counter

    from medtune.conditions import CONDITIONS, augmentation_for

    pool = tuple(CONDITIONS[1:])
    before = [augmentation_for(k, pool) for k in range(3000)]
    assert before == [augmentation_for(k, tuple(reversed(pool))) for k in range(3000)]
    grown = [augmentation_for(k, pool + ("stain-1",)) for k in range(3000)]
    moved = [(a, b) for a, b in zip(before, grown) if a != b]
    assert moved and all(b == "stain-1" for _, b in moved)
    # and the choice is spread evenly: about 3000 / 29 each
    counts = Counter(grown)
    assert len(counts) == 29 and max(counts.values()) < 2 * 3000 / 29
