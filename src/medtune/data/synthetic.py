"""Synthetic H&E histology (v2): the embedded default dataset.

Nine tissue classes modelled on NCT-CRC-HE-100K's (adipose tissue, background, debris,
lymphocytes, mucus, smooth muscle, normal mucosa, cancer-associated stroma, tumour
epithelium), in three organ groups (colon, rectum, stomach), scanned at four centres.

* **Tissue** — every image is drawn by one renderer from a class's *recipe*: ranges of
  eosin density and texture, fibre alignment, nuclear count, size, shape and darkness,
  vesicular nuclei, nuclear fragments, glands with nuclear rings, fat vacuoles, mucin.
  Neighbouring tissues share parts of their ranges (muscle and stroma, tumour and normal
  mucosa, debris and lymphocytes, mucus, fat and background), so some images are
  genuinely ambiguous and no classifier reaches 100 %.
* **Centres** — each has its own haematoxylin and eosin stain vectors and intensities
  (optical density, Beer–Lambert), illumination, scanner blur and sensor noise, plus a
  slide-to-slide jitter. The test split holds out centre D; train and validation come from
  centres A and B; pretraining from A, B and C — never from the test's centre.
* **Organ** (the ``group`` column) — stomach glands are elongated, rectal tissue carries
  more mucin; captions name the organ.
* **Captions** — see :mod:`medtune.data.synthetic_captions`: varied wording, partial,
  ambiguous and about 4 % wrong (``pathology``), or colour and texture only (``generic``).

Generation is a pure function of the seed, vectorised over chunks of :data:`CHUNK` images
with numpy (see :mod:`medtune.data.synthetic_render` for why it is bit-identical on any
machine). Each split draws from its own streams, so growing the train split leaves the
test images unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from medtune.data import synthetic_captions as captions
from medtune.data import synthetic_render as render

CLASSES = (
    "adipose tissue",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal mucosa",
    "cancer-associated stroma",
    "tumour epithelium",
)
GROUPS = ("colon", "rectum", "stomach")
GROUP_SHARES = (0.45, 0.35, 0.20)
SPLIT_CODES = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
CHUNK = 32  # images rendered together: small enough for the arrays to stay in cache


@dataclass(frozen=True)
class Centre:
    """A lab's stain and scanner. Stain vectors are optical density per unit concentration
    in R, G, B (Ruifrok & Johnston's H&E vectors, perturbed per lab)."""

    name: str
    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    h_intensity: float
    e_intensity: float
    white: tuple[float, float, float]  # illumination I0, in [0, 1]
    blur_sigma: float  # pixels of a 64-px image
    noise: float  # standard deviation of the sensor noise, in [0, 1] units


CENTRES = (
    Centre("A", (0.650, 0.704, 0.286), (0.072, 0.990, 0.105), 1.00, 0.85, (0.96, 0.95, 0.97), 0.6, 0.012),
    Centre("B", (0.600, 0.740, 0.304), (0.120, 0.960, 0.250), 0.85, 1.05, (0.95, 0.94, 0.95), 0.9, 0.018),
    Centre("C", (0.700, 0.660, 0.270), (0.050, 0.980, 0.180), 1.10, 0.75, (0.97, 0.96, 0.98), 0.5, 0.010),
    Centre("D", (0.540, 0.760, 0.360), (0.180, 0.930, 0.320), 1.20, 0.70, (0.93, 0.93, 0.96), 1.1, 0.022),
)
SPLIT_CENTRES = {"pretrain": ("A", "B", "C"), "train": ("A", "B"), "val": ("A", "B"), "test": ("D",)}
STAIN_JITTER = 0.12  # slide-to-slide: each image's stain intensities vary by up to ±12 %
FIBRE_SPACING = 4.0  # px of a 64-px image between knots of the fibre profile

# Per-class ranges (uniform) of the renderer's parameters; absent ones are 0. Counts and
# lengths are for a 64-px image and scale with the image size.
#   tissue      share of the patch covered by tissue
#   eosin       eosin concentration of the matrix; texture: its relative variation
#   grain       share of fine-grained (vs broad) texture; fibre: share of fibre streaks
#   wave        waviness of the fibres; gaps: clefts between fibres (loose tissue)
#   cyto_h      haematoxylin of cytoplasm and matrix (basophilia); mucus: pale-blue mucin
#   nuclei      scattered nuclei; radius, elong (1 = round), align (share along the fibres),
#               dark (haematoxylin), vesicular (share with open chromatin and a nucleolus)
#   fragments   nuclear dust; glands, gland_radius, ring (nuclei around each lumen)
#   fat         share of fat vacuoles present; fat_radius
RECIPES: dict[str, dict[str, tuple[float, float]]] = {
    "adipose tissue": dict(tissue=(0.85, 1), eosin=(0.35, 0.7), texture=(0.1, 0.4), grain=(0, 0.5), fibre=(0, 0.2), wave=(0, 1),
                           gaps=(0, 0.2), cyto_h=(0, 0.05), mucus=(0, 0.05), nuclei=(0, 6), radius=(0.9, 1.5), elong=(1.4, 3),
                           align=(0, 0.3), dark=(0.6, 1.0), fragments=(0, 4), fat=(0.75, 1), fat_radius=(7, 12)),
    "background": dict(tissue=(0, 0.2), eosin=(0.1, 0.5), texture=(0.2, 0.6), grain=(0.3, 1), fibre=(0, 0.3), wave=(0, 1),
                       cyto_h=(0, 0.08), mucus=(0, 0.15), nuclei=(0, 6), radius=(1, 2.2), elong=(1, 2), dark=(0.4, 1.0),
                       vesicular=(0, 0.3), fragments=(0, 10), fat=(0, 0.1), fat_radius=(6, 12)),
    "debris": dict(tissue=(0.55, 1), eosin=(0.35, 0.85), texture=(0.3, 0.7), grain=(0.5, 1), fibre=(0, 0.3), wave=(0, 1),
                   gaps=(0, 0.4), cyto_h=(0.05, 0.25), mucus=(0, 0.35), nuclei=(8, 45), radius=(1.2, 2.6), elong=(1, 1.8),
                   dark=(0.8, 1.4), vesicular=(0, 0.3), fragments=(40, 150), fat=(0, 0.1), fat_radius=(5, 9)),
    "lymphocytes": dict(tissue=(0.85, 1), eosin=(0.1, 0.45), texture=(0.2, 0.5), grain=(0.3, 0.8), fibre=(0, 0.2), wave=(0, 1),
                        cyto_h=(0.05, 0.25), nuclei=(100, 190), radius=(1.2, 2.0), elong=(1, 1.4), dark=(0.85, 1.4),
                        vesicular=(0, 0.15), fragments=(0, 35)),
    "mucus": dict(tissue=(0.55, 1), eosin=(0.05, 0.35), texture=(0.3, 0.7), grain=(0, 0.4), fibre=(0.3, 0.9), wave=(0.3, 1),
                  gaps=(0.2, 0.7), cyto_h=(0, 0.1), mucus=(0.5, 1), nuclei=(0, 18), radius=(1.2, 2.4), elong=(1, 2.5),
                  align=(0, 0.5), dark=(0.5, 1.1), vesicular=(0, 0.4), fragments=(0, 25)),
    "smooth muscle": dict(tissue=(0.9, 1), eosin=(0.6, 1.05), texture=(0.2, 0.5), grain=(0, 0.3), fibre=(0.55, 1), wave=(0, 0.35),
                          gaps=(0, 0.35), cyto_h=(0, 0.1), nuclei=(12, 40), radius=(1.1, 1.8), elong=(2.8, 5.5), align=(0.75, 1),
                          dark=(0.6, 1.05)),
    "normal mucosa": dict(tissue=(0.9, 1), eosin=(0.35, 0.75), texture=(0.2, 0.5), grain=(0.2, 0.6), fibre=(0, 0.35), wave=(0, 1),
                          gaps=(0, 0.3), cyto_h=(0.05, 0.2), mucus=(0.1, 0.45), nuclei=(15, 45), radius=(1.5, 2.4), elong=(1.2, 2.2),
                          dark=(0.7, 1.15), vesicular=(0, 0.2), fragments=(0, 10), glands=(1.5, 4.5), gland_radius=(4.5, 8.5),
                          ring=(8, 16)),
    "cancer-associated stroma": dict(tissue=(0.85, 1), eosin=(0.45, 0.9), texture=(0.3, 0.65), grain=(0.1, 0.5), fibre=(0.35, 0.9),
                                     wave=(0.3, 1), gaps=(0.2, 0.6), cyto_h=(0, 0.12), mucus=(0, 0.15), nuclei=(10, 40),
                                     radius=(1.1, 1.9), elong=(1.8, 4.5), align=(0.35, 0.85), dark=(0.6, 1.05), vesicular=(0, 0.15),
                                     fragments=(0, 15), fat=(0, 0.1), fat_radius=(6, 10)),
    "tumour epithelium": dict(tissue=(0.9, 1), eosin=(0.25, 0.6), texture=(0.2, 0.5), grain=(0.2, 0.6), fibre=(0, 0.3), wave=(0, 1),
                              gaps=(0, 0.3), cyto_h=(0.15, 0.4), mucus=(0, 0.2), nuclei=(50, 110), radius=(2.1, 3.6), elong=(1.2, 2.2),
                              dark=(0.65, 1.05), vesicular=(0.3, 0.85), fragments=(0, 30), glands=(0, 3), gland_radius=(2.5, 6.5),
                              ring=(8, 16)),
}
PARAMS = ("tissue", "eosin", "texture", "grain", "fibre", "wave", "gaps", "cyto_h", "mucus", "nuclei", "radius", "elong", "align",
          "dark", "vesicular", "fragments", "glands", "gland_radius", "ring", "fat", "fat_radius")
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
_RECIPE_LO = np.array([[RECIPES[c].get(p, (0, 0))[0] for p in PARAMS] for c in CLASSES], dtype=np.float32)
_RECIPE_HI = np.array([[RECIPES[c].get(p, (0, 0))[1] for p in PARAMS] for c in CLASSES], dtype=np.float32)
# Organ effects, added to the drawn parameters: rectal tissue holds more mucin, stomach
# glands are elongated (lumen elongation drawn from this range) and cells more basophilic.
GROUP_EFFECTS = {
    "colon": dict(mucus=0.0, cyto_h=0.0, lumen_elong=(1.0, 1.4)),
    "rectum": dict(mucus=0.08, cyto_h=0.0, lumen_elong=(1.0, 1.4)),
    "stomach": dict(mucus=0.0, cyto_h=0.03, lumen_elong=(1.4, 2.0)),
}


@dataclass(frozen=True)
class SyntheticSpec:
    sizes: dict[str, int]
    image_size: int = 96
    seed: int = 0
    classes: tuple[str, ...] = CLASSES
    groups: tuple[str, ...] = GROUPS
    caption_style: str = "pathology"


def _check(spec: SyntheticSpec) -> None:
    unknown = sorted(set(spec.classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown synthetic class(es) {unknown}; known: {list(CLASSES)}")
    unknown = sorted(set(spec.groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown synthetic group(s) {unknown}; known: {list(GROUPS)}")
    bad = sorted(set(spec.sizes) - set(SPLIT_CODES))
    if bad:
        raise ValueError(f"unknown synthetic split(s) {bad}; expected some of {list(SPLIT_CODES)}")
    if spec.caption_style not in ("pathology", "generic"):
        raise ValueError(f"unknown caption_style {spec.caption_style!r}; expected 'pathology' or 'generic'")


def _stream(seed: int, split: str, part: int) -> np.random.Generator:
    """Independent stream per split and part (0: the split's plan, 1 + k: chunk k's images)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], part)))


def sample_plan(spec: SyntheticSpec) -> pd.DataFrame:
    """The sample table without images: ``index, split, label, label_name, caption, group,
    centre`` (plus ``caption_kind``), class-balanced within each split."""
    _check(spec)
    frames = []
    start = 0
    centre_index = {c.name: i for i, c in enumerate(CENTRES)}
    shares = np.array([GROUP_SHARES[GROUPS.index(g)] for g in spec.groups])
    for split, n in spec.sizes.items():
        rng = _stream(spec.seed, split, 0)
        labels = np.arange(n) % len(spec.classes)
        rng.shuffle(labels)
        groups = np.searchsorted(np.cumsum(shares), rng.random(n) * shares.sum(), side="right").clip(max=len(shares) - 1)
        centres = np.array([centre_index[c] for c in SPLIT_CENTRES[split]])[rng.integers(0, len(SPLIT_CENTRES[split]), n)]
        organs = [spec.groups[g] for g in groups]
        if spec.caption_style == "pathology":
            texts, kinds = captions.pathology_captions(labels, organs, spec.classes, rng)
            kinds = [captions.KIND_NAMES[k] for k in kinds]
        else:
            texts, kinds = captions.generic_captions(labels, spec.classes, rng), ["generic"] * n
        frames.append(pd.DataFrame({
            "index": np.arange(start, start + n),
            "split": split,
            "label": labels,
            "label_name": [spec.classes[label] for label in labels],
            "caption": texts,
            "group": organs,
            "centre": [CENTRES[c].name for c in centres],
            "caption_kind": kinds,
        }))
        start += n
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def draw_parameters(names: list[str], organs: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each image's renderer parameters, drawn uniformly from its class's ranges."""
    classes = np.array([_CLASS_INDEX[c] for c in names])
    lo, hi = _RECIPE_LO[classes], _RECIPE_HI[classes]
    u = rng.random(lo.shape, dtype=np.float32)
    drawn = lo + (hi - lo) * u
    params = {p: drawn[:, i] for i, p in enumerate(PARAMS)}
    effects = [GROUP_EFFECTS[o] for o in organs]
    params["mucus"] = params["mucus"] + np.array([e["mucus"] for e in effects], dtype=np.float32)
    params["cyto_h"] = params["cyto_h"] + np.array([e["cyto_h"] for e in effects], dtype=np.float32)
    e_lo = np.array([e["lumen_elong"][0] for e in effects], dtype=np.float32)
    e_hi = np.array([e["lumen_elong"][1] for e in effects], dtype=np.float32)
    params["lumen_elong"] = e_lo + (e_hi - e_lo) * rng.random(len(names), dtype=np.float32)
    return params


def _counts(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding: integer counts whose expectation is ``mean``."""
    return np.floor(mean + rng.random(len(mean), dtype=np.float32)).astype(np.int64)


def _jitter(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    return (1 - spread + 2 * spread * rng.random(n, dtype=np.float32)).astype(np.float32)


def _nuclei(p: dict[str, np.ndarray], fibre_angle: np.ndarray, centres: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin of scattered nuclei, gland-ring nuclei and nuclear fragments, and the
    summed coverage of lumens and fat vacuoles: two (B, S, S) layers."""
    n, scale = len(p["nuclei"]), size / 64
    area = scale * scale
    images, ys, xs, radii, elongs, angles, kinds, weights = [], [], [], [], [], [], [], []

    def add(image, y, x, radius, elong, angle, kind, weight):
        for store, value in zip((images, ys, xs, radii, elongs, angles, kinds, weights), (image, y, x, radius, elong, angle, kind, weight)):
            store.append(value)

    # scattered nuclei
    count = _counts(p["nuclei"] * area, rng)
    img = np.repeat(np.arange(n), count)
    m = len(img)
    aligned = rng.random(m, dtype=np.float32) < p["align"][img]
    angle = np.where(aligned, (fibre_angle[img] + rng.integers(-1, 2, m)) % render.N_ANGLES, rng.integers(0, render.N_ANGLES, m))
    add(img, rng.integers(0, size, m), rng.integers(0, size, m), p["radius"][img] * _jitter(rng, m, 0.15),
        1 + (p["elong"][img] - 1) * _jitter(rng, m, 0.3), angle, rng.random(m, dtype=np.float32) < p["vesicular"][img],
        p["dark"][img] * _jitter(rng, m, 0.2))
    # nuclear fragments (karyorrhexis): small, dark, irregular
    count = _counts(p["fragments"] * area, rng)
    img = np.repeat(np.arange(n), count)
    m = len(img)
    add(img, rng.integers(0, size, m), rng.integers(0, size, m), 0.5 + 0.6 * rng.random(m, dtype=np.float32),
        1 + 1.8 * rng.random(m, dtype=np.float32), rng.integers(0, render.N_ANGLES, m), np.zeros(m, bool),
        p["dark"][img] * _jitter(rng, m, 0.35))
    # glands: a lumen ringed by nuclei whose long axes point at its centre
    glands = _counts(p["glands"], rng)
    g_img = np.repeat(np.arange(n), glands)
    g = len(g_img)
    gy, gx = rng.integers(0, size, g), rng.integers(0, size, g)
    lumen = p["gland_radius"][g_img] * _jitter(rng, g, 0.2)
    ring = np.maximum(np.floor(p["ring"][g_img] + 0.5).astype(np.int64), 1)
    r_img = np.repeat(np.arange(g), ring)
    slot = np.arange(len(r_img)) - np.repeat(np.cumsum(ring) - ring, ring)
    step = (slot * 24) // ring[r_img] + rng.integers(0, 2, len(r_img))
    step = (step + rng.integers(0, 24, g)[r_img]) % 24
    nuc_r = p["radius"][g_img][r_img]
    dist = (lumen[r_img] + 0.9 * nuc_r + 0.5) * scale
    ry = gy[r_img] + np.floor(dist * render.SIN24[step] + 0.5).astype(np.int64)
    rx = gx[r_img] + np.floor(dist * render.COS24[step] + 0.5).astype(np.int64)
    add(g_img[r_img], ry, rx, nuc_r * _jitter(rng, len(r_img), 0.1), np.maximum(p["elong"][g_img][r_img], 1.4), step % render.N_ANGLES,
        rng.random(len(r_img), dtype=np.float32) < p["vesicular"][g_img][r_img], p["dark"][g_img][r_img] * _jitter(rng, len(r_img), 0.15))

    cat = lambda parts: np.concatenate(parts)
    bank = render.nucleus_bank(size, tuple(c.blur_sigma for c in CENTRES))
    r_idx = render.nearest_index(render.NUCLEUS_RADII, cat(radii))
    e_idx = render.nearest_index(render.NUCLEUS_ELONGATIONS, cat(elongs))
    extent = render.NUCLEUS_RADII[r_idx] * scale * np.sqrt(render.NUCLEUS_ELONGATIONS[e_idx])
    image = cat(images)
    index = (centres[image], r_idx, e_idx, cat(angles), cat(kinds).astype(np.int64))
    nuclei = render.stamp(n, size, bank, index, extent, image, cat(ys) % size, cat(xs) % size, cat(weights).astype(np.float32))

    # clear areas: gland lumens and a jittered grid of fat vacuoles
    spacing = 2 * 0.92 * np.maximum(p["fat_radius"], 2)
    per_side = np.where(p["fat"] > 0, np.maximum(np.floor(64 / spacing + 0.5).astype(np.int64), 1), 0)
    cells = per_side * per_side
    f_img = np.repeat(np.arange(n), cells)
    k = np.arange(len(f_img)) - np.repeat(np.cumsum(cells) - cells, cells)
    side = per_side[f_img]
    cell = size / side
    fy = np.floor(((k // side) + 0.5 + 0.3 * (rng.random(len(k), dtype=np.float32) - 0.5)) * cell).astype(np.int64)
    fx = np.floor(((k % side) + 0.5 + 0.3 * (rng.random(len(k), dtype=np.float32) - 0.5)) * cell).astype(np.int64)
    present = rng.random(len(k), dtype=np.float32) < p["fat"][f_img]
    f_radius = p["fat_radius"][f_img] * _jitter(rng, len(k), 0.1)
    f_elong = 1 + 0.4 * rng.random(len(k), dtype=np.float32)
    b_img = cat([f_img[present], g_img])
    b_r = render.nearest_index(render.BLOB_RADII, cat([f_radius[present], lumen]))
    b_e = render.nearest_index(render.BLOB_ELONGATIONS, cat([f_elong[present], p["lumen_elong"][g_img]]))
    b_a = rng.integers(0, render.N_ANGLES, len(b_img))
    extent = render.BLOB_RADII[b_r] * scale * np.sqrt(render.BLOB_ELONGATIONS[b_e])
    clear = render.stamp(n, size, render.blob_bank(size), (b_r, b_e, b_a), extent, b_img, cat([fy[present], gy]) % size,
                         cat([fx[present], gx]) % size, np.ones(len(b_img), dtype=np.float32))
    return nuclei, clear


def render_tissue(p: dict[str, np.ndarray], centres: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps (B, S, S) of images with parameters ``p``,
    nuclei blurred by their centre's scanner.

    The smooth layers (tissue mask, matrix texture, fibres, cytoplasm, mucin) are composed at
    half resolution and interpolated up; nuclei, fragments, lumens and vacuoles are stamped at
    full resolution, where their edges are."""
    n = len(p["tissue"])
    low = max(8, size // 2)
    col = {k: v[:, None, None] for k, v in p.items()}
    broad = render.smooth_field(rng, n, low, 3)
    fine = render.smooth_field(rng, n, low, max(4, size // 4))
    orientation = rng.integers(0, render.N_ANGLES, n)
    streaks = render.fibre_field(rng, n, low, orientation, p["wave"], spacing=FIBRE_SPACING * low / 64)
    streaks *= 0.75  # fibres vary along their length too
    streaks += 0.25 * fine
    # tissue covers the patch where the broad field exceeds a threshold set by 'tissue'
    tissue = broad + (1.5 * col["tissue"] - 0.9)
    tissue *= 6
    np.clip(tissue, 0, 1, out=tissue)
    # matrix texture T in [0, 1]: broad or granular, mixed with contrasted fibre streaks
    texture = broad * ((1 - col["grain"]) * (1 - col["fibre"]))
    texture += fine * (col["grain"] * (1 - col["fibre"]))
    fibres = streaks * 3 - 1
    np.clip(fibres, 0, 1, out=fibres)
    fibres *= col["fibre"]
    texture += fibres
    # eosin: eosin (1 + texture_amp (2T - 1)) (1 - gaps (1 - T)), thinned by mucin
    c_e = texture * (2 * col["eosin"] * col["texture"])
    c_e += col["eosin"] * (1 - col["texture"])
    texture *= col["gaps"]
    texture += 1 - col["gaps"]
    c_e *= texture
    c_e *= 1 - 0.75 * np.minimum(col["mucus"], 1)
    # mucin, mucus (0.3 + 0.7 streaks), stains faintly with both: 0.3 of it as haematoxylin, 0.08 as eosin
    c_e += streaks * (0.056 * col["mucus"])
    c_e += 0.024 * col["mucus"]
    c_e *= tissue
    # haematoxylin of cytoplasm, cyto_h (0.7 + 0.6 fine), and mucin
    c_h = fine * (0.6 * col["cyto_h"])
    c_h += streaks * (0.21 * col["mucus"])
    c_h += 0.7 * col["cyto_h"] + 0.09 * col["mucus"]
    c_h *= tissue
    c_h, c_e, tissue = np.split(render.upsample(np.concatenate([c_h, c_e, tissue]), size, size, smooth=False), 3)
    # full resolution: nothing stained inside lumens and fat vacuoles (open = 1 - clear
    # coverage; where two vacuoles overlap, sum near 2, a membrane remains); nuclei on the
    # tissue, a few floating in lumens
    nuclei, clear = _nuclei(p, render.fibre_sprite_angle(orientation), centres, size, rng)
    clear -= 1
    np.abs(clear, out=clear)
    np.minimum(clear, 1, out=clear)
    c_h *= clear
    c_e *= clear
    np.minimum(nuclei, 1.8, out=nuclei)
    nuclei *= tissue
    c_h += nuclei
    return c_h, c_e


def scan(c_h: np.ndarray, c_e: np.ndarray, centres: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB of concentration maps stained at each image's centre, with its sensor noise and a
    slide-to-slide jitter of the stain intensities and the illumination."""
    n = len(centres)
    table = [CENTRES[c] for c in centres]
    h_od = np.array([c.haematoxylin for c in table], dtype=np.float32) * np.array([c.h_intensity for c in table], dtype=np.float32)[:, None]
    e_od = np.array([c.eosin for c in table], dtype=np.float32) * np.array([c.e_intensity for c in table], dtype=np.float32)[:, None]
    h_od = h_od * _jitter(rng, n, STAIN_JITTER)[:, None]
    e_od = e_od * _jitter(rng, n, STAIN_JITTER)[:, None]
    white = np.array([c.white for c in table], dtype=np.float32) * _jitter(rng, n, 0.015)[:, None]
    noise = np.array([c.noise for c in table], dtype=np.float32)
    return render.scan(c_h, c_e, h_od, e_od, white, noise, rng)


def render_images(names: list[str], organs: list[str], centres: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    params = draw_parameters(names, organs, rng)
    c_h, c_e = render_tissue(params, centres, size, rng)
    return scan(c_h, c_e, centres, size, rng)


def generate(spec: SyntheticSpec) -> tuple[np.ndarray, pd.DataFrame]:
    """All images (uint8 N x S x S x 3) and the sample table, class-balanced within each split."""
    rows = sample_plan(spec)
    images = np.empty((len(rows), spec.image_size, spec.image_size, 3), dtype=np.uint8)
    for start, chunk in _render_chunks(spec, rows):
        images[start : start + len(chunk)] = chunk
    return images, rows


def generate_chunks(spec: SyntheticSpec, chunk_size: int = 1024) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """:func:`generate`'s sample rows and images about ``chunk_size`` at a time, in index order,
    so that a store larger than memory (PCam's size) is written chunk by chunk. The images are
    the same whatever ``chunk_size``: each split is drawn in :data:`CHUNK`-image streams of its own."""
    rows = sample_plan(spec)
    for start, images in _render_chunks(spec, rows, chunk_size):
        yield rows.iloc[start : start + len(images)].reset_index(drop=True), images


def _render_chunks(spec: SyntheticSpec, rows: pd.DataFrame, chunk_size: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """The images of the plan ``rows``, as (index of the first, images) about ``chunk_size`` at a time."""
    size = spec.image_size
    centre_index = {c.name: i for i, c in enumerate(CENTRES)}
    per_yield = max(CHUNK, chunk_size - chunk_size % CHUNK)
    for split in spec.sizes:
        part = rows[rows["split"] == split]  # a split's rows are consecutive
        names, organs = part["label_name"].tolist(), part["group"].tolist()
        centres = np.array([centre_index[c] for c in part["centre"]])
        for first in range(0, len(part), per_yield):
            last = min(first + per_yield, len(part))
            images = np.empty((last - first, size, size, 3), dtype=np.uint8)
            for start in range(first, last, CHUNK):
                stop = min(start + CHUNK, last)
                rng = _stream(spec.seed, split, 1 + start // CHUNK)
                images[start - first : stop - first] = render_images(names[start:stop], organs[start:stop], centres[start:stop], size, rng)
            yield int(part["index"].iloc[first]), images
