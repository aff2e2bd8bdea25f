"""Synthetic H&E-like histology: the embedded default dataset.

Each tissue class is drawn by its own recipe so that classes differ the way real
tissue does — nucleus density and size, the hematoxylin/eosin balance, gland-like
lumens, fat cells — and each image belongs to an organ group whose stain tint is
slightly different. Every image gets a free-text caption from varied templates,
mentioning its class (``caption_style="pathology"``) or only its look
(``"generic"``), so backbones pretrained on either can be compared.

Generation is a pure function of the seed: one ``numpy`` Generator per image,
derived with ``SeedSequence.spawn``, so any image can be regenerated alone and
the result is the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from scipy import ndimage

CLASSES = ("tumor", "stroma", "normal glands", "lymphocytes", "adipose tissue")
GROUPS = ("colon", "lung", "lymph node")
COLUMNS = ["index", "split", "label", "label_name", "caption", "group"]

HEMATOXYLIN = np.array([0.30, 0.18, 0.50], dtype=np.float32)
EOSIN = np.array([0.93, 0.50, 0.70], dtype=np.float32)
BACKGROUND = np.array([0.96, 0.93, 0.95], dtype=np.float32)
# Per-organ stain tint: a multiplicative RGB factor, small enough that class
# appearance dominates but visible to a model.
GROUP_TINT = {
    "colon": np.array([1.00, 0.97, 1.00], dtype=np.float32),
    "lung": np.array([0.97, 0.96, 1.04], dtype=np.float32),
    "lymph node": np.array([1.04, 0.99, 0.95], dtype=np.float32),
}

PATHOLOGY_TEMPLATES = (
    "an H&E stained {group} section showing {cls}.",
    "histopathology of {group} tissue with {cls}.",
    "{cls} in a {group} biopsy, hematoxylin and eosin stain.",
    "microscopy image of {cls} from the {group}.",
    "a pathology patch of {cls}, {detail}.",
    "{group} specimen: {cls} with {detail}.",
)
CLASS_DETAILS = {
    "tumor": ("crowded large atypical nuclei", "dense pleomorphic nuclei", "sheets of malignant cells"),
    "stroma": ("pink collagen fibres", "sparse spindle-shaped nuclei", "fibrous eosinophilic matrix"),
    "normal glands": ("round glands with open lumens", "regular glandular architecture", "nuclei lining each lumen"),
    "lymphocytes": ("many small round dark nuclei", "dense lymphoid infiltrate", "packed small lymphocytes"),
    "adipose tissue": ("large empty fat cells", "thin membranes around clear vacuoles", "mostly white fatty areas"),
}
GENERIC_TEMPLATES = (
    "a {tone} image with {texture}.",
    "a picture of {texture}, mostly {tone}.",
    "{texture} on a {tone} background.",
)
GENERIC_LOOK = {
    "tumor": (("dark purple", "purple"), ("many big dots", "crowded blobs")),
    "stroma": (("pink", "rosy"), ("long stripes", "wavy lines")),
    "normal glands": (("pink and white", "light pink"), ("rings of dots", "round holes")),
    "lymphocytes": (("dark", "speckled purple"), ("tiny dots everywhere", "fine speckles")),
    "adipose tissue": (("white", "pale"), ("thin lines", "large empty bubbles")),
}


@dataclass(frozen=True)
class SyntheticSpec:
    sizes: dict[str, int]
    image_size: int = 96
    seed: int = 0
    classes: tuple[str, ...] = CLASSES
    groups: tuple[str, ...] = GROUPS
    caption_style: str = "pathology"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells), dtype=np.float32)
    return ndimage.zoom(coarse, size / cells, order=1)[:size, :size]


def _ellipses(rng, size, n, r_min, r_max, elong=(1.0, 1.0), angle=None, centres=None) -> np.ndarray:
    """Soft coverage (0..1) of n filled ellipses."""
    if n == 0:
        return np.zeros((size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = centres if centres is not None else rng.uniform(0, size, (n, 2)).astype(np.float32)
    r = rng.uniform(r_min, r_max, n).astype(np.float32)
    e = rng.uniform(*elong, n).astype(np.float32)
    theta = (rng.uniform(0, np.pi, n) if angle is None else angle + rng.normal(0, 0.15, n)).astype(np.float32)
    dx = xx[None] - c[:, 1, None, None]
    dy = yy[None] - c[:, 0, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * cos + dy * sin) / (r * e)[:, None, None]
    v = (-dx * sin + dy * cos) / r[:, None, None]
    d = np.sqrt(u * u + v * v)
    return np.clip(1.5 - d, 0, 1).max(axis=0)


def _render(cls: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Eosin and hematoxylin densities (each size x size, 0..1) for one class."""
    texture = _smooth_noise(rng, size, 6)
    if cls == "tumor":
        eosin = 0.30 + 0.15 * texture
        nuclei = _ellipses(rng, size, int(rng.integers(55, 85)), 2.8, 4.5, (1.0, 1.6))
        return eosin, 0.25 * texture + nuclei
    if cls == "stroma":
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.5, 0.9))
        eosin = 0.55 + 0.3 * stripes * texture + 0.1 * texture
        nuclei = _ellipses(rng, size, int(rng.integers(8, 18)), 1.0, 1.5, (3.0, 4.5), angle=angle + np.pi / 2)
        return eosin, nuclei
    if cls == "normal glands":
        n_glands = int(rng.integers(2, 5))
        centres = rng.uniform(size * 0.15, size * 0.85, (n_glands, 2)).astype(np.float32)
        radii = rng.uniform(size * 0.09, size * 0.16, n_glands).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        dist = np.sqrt((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
        lumen = np.clip(radii[:, None, None] - dist, 0, 1).max(axis=0)
        ring = []
        for (cy, cx), r in zip(centres, radii):
            phi = np.linspace(0, 2 * np.pi, 14, endpoint=False) + rng.uniform(0, 1)
            ring.append(np.stack([cy + (r + 2.5) * np.sin(phi), cx + (r + 2.5) * np.cos(phi)], axis=1))
        ring = np.concatenate(ring).astype(np.float32)
        nuclei = _ellipses(rng, size, len(ring), 2.0, 2.6, centres=ring)
        eosin = (0.5 + 0.2 * texture) * (1 - lumen)
        return eosin, nuclei * (1 - lumen)
    if cls == "lymphocytes":
        eosin = 0.15 + 0.1 * texture
        nuclei = _ellipses(rng, size, int(rng.integers(120, 170)), 1.5, 2.1)
        return eosin, nuclei
    if cls == "adipose tissue":
        seeds = rng.uniform(0, size, (int(rng.integers(6, 12)), 2)).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        dist = np.sqrt((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2)
        two = np.sort(dist, axis=0)[:2]
        membrane = np.clip(1.8 - (two[1] - two[0]), 0, 1)
        nuclei = _ellipses(rng, size, int(rng.integers(0, 4)), 1.0, 1.4, (2.5, 3.5))
        return 0.7 * membrane + 0.05 * texture, nuclei
    raise ValueError(f"unknown synthetic class {cls!r}; known: {list(CLASSES)}")


def render_image(cls: str, group: str, rng: np.random.Generator, size: int) -> np.ndarray:
    eosin, hema = _render(cls, rng, size)
    eosin, hema = np.clip(eosin, 0, 1)[..., None], np.clip(hema, 0, 1)[..., None]
    # Beer-Lambert-like mixing: each stain absorbs towards its colour.
    rgb = BACKGROUND * (1 - eosin * (1 - EOSIN)) * (1 - hema * (1 - HEMATOXYLIN))
    jitter = 1 + rng.normal(0, 0.03, 3).astype(np.float32)
    rgb = rgb * GROUP_TINT[group] * jitter + rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def caption_for(cls: str, group: str, rng: np.random.Generator, style: str) -> str:
    if style == "pathology":
        template = PATHOLOGY_TEMPLATES[rng.integers(len(PATHOLOGY_TEMPLATES))]
        detail = CLASS_DETAILS[cls][rng.integers(len(CLASS_DETAILS[cls]))]
        return template.format(cls=cls, group=group, detail=detail)
    if style == "generic":
        tones, textures = GENERIC_LOOK[cls]
        template = GENERIC_TEMPLATES[rng.integers(len(GENERIC_TEMPLATES))]
        return template.format(tone=tones[rng.integers(len(tones))], texture=textures[rng.integers(len(textures))])
    raise ValueError(f"unknown caption_style {style!r}; expected 'pathology' or 'generic'")


def generate(spec: SyntheticSpec) -> tuple[np.ndarray, pd.DataFrame]:
    """All images and the sample table, class-balanced within each split."""
    chunks = list(generate_chunks(spec))
    if not chunks:
        return np.empty((0, spec.image_size, spec.image_size, 3), np.uint8), pd.DataFrame(columns=COLUMNS)
    return np.concatenate([images for _, images in chunks]), pd.concat([rows for rows, _ in chunks], ignore_index=True)


def generate_chunks(spec: SyntheticSpec, chunk_size: int = 1024) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """:func:`generate`'s sample rows and images, ``chunk_size`` at a time in index order,
    so that a store larger than memory (PCam's size) is written chunk by chunk."""
    unknown = sorted(set(spec.classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown synthetic class(es) {unknown}; known: {list(CLASSES)}")
    plan = []
    root = np.random.default_rng(spec.seed)
    for split, n in spec.sizes.items():
        labels = np.arange(n) % len(spec.classes)
        root.shuffle(labels)
        groups = root.integers(len(spec.groups), size=n)
        plan += [(split, int(label), int(g)) for label, g in zip(labels, groups)]
    children = np.random.SeedSequence(spec.seed).spawn(len(plan))
    for start in range(0, len(plan), chunk_size):
        stop = min(start + chunk_size, len(plan))
        images = np.empty((stop - start, spec.image_size, spec.image_size, 3), dtype=np.uint8)
        rows = []
        for i in range(start, stop):
            (split, label, g), rng = plan[i], np.random.default_rng(children[i])
            cls, group = spec.classes[label], spec.groups[g]
            images[i - start] = render_image(cls, group, rng, spec.image_size)
            rows.append((i, split, label, cls, caption_for(cls, group, rng, spec.caption_style), group))
        yield pd.DataFrame(rows, columns=COLUMNS), images
