"""Free-text captions for the synthetic dataset, noisy the way web-scraped image-text pairs are.

``pathology`` captions name the tissue with varied wording — the class name, a synonym, or
only a description of its look — and some are partial (organ and stain only), ambiguous
(two confusable tissues) or wrong (another tissue's caption). ``generic`` captions describe
colour and texture only and never name a tissue, for the generic-caption backbone.
"""

from __future__ import annotations

import numpy as np

# What a pathologist might write for each tissue: the class name first, then synonyms.
NAMES = {
    "adipose tissue": ("adipose tissue", "fat", "adipocytes", "fatty tissue"),
    "background": ("background", "empty glass", "no tissue", "slide background"),
    "debris": ("debris", "necrosis", "necrotic debris", "cell debris"),
    "lymphocytes": ("lymphocytes", "lymphoid infiltrate", "lymphocytic aggregate", "inflammatory cells"),
    "mucus": ("mucus", "mucin", "extracellular mucin", "mucin pool"),
    "smooth muscle": ("smooth muscle", "muscularis propria", "muscle bundles", "smooth muscle fibres"),
    "normal mucosa": ("normal mucosa", "benign mucosa", "normal glands", "healthy mucosa"),
    "cancer-associated stroma": ("cancer-associated stroma", "tumour stroma", "desmoplastic stroma", "reactive stroma"),
    "tumour epithelium": ("tumour epithelium", "adenocarcinoma", "carcinoma", "malignant epithelium"),
}
LOOKS = {
    "adipose tissue": ("large clear vacuoles with thin membranes", "empty polygonal cells"),
    "background": ("mostly empty, a few specks", "pale glass without cells"),
    "debris": ("granular pink material with nuclear dust", "fragmented dark nuclei"),
    "lymphocytes": ("sheets of small round dark nuclei", "densely packed small nuclei"),
    "mucus": ("pale bluish wispy material", "faint pools with few floating cells"),
    "smooth muscle": ("long parallel pink fibres with cigar-shaped nuclei", "dense eosinophilic bundles"),
    "normal mucosa": ("regular glands with round lumens", "crypts lined by basal nuclei"),
    "cancer-associated stroma": ("wavy pink fibres with scattered spindle cells", "loose collagen with spindle nuclei"),
    "tumour epithelium": ("crowded large vesicular nuclei", "irregular glands with atypical nuclei"),
}
# Tissues a reader might mistake for each other: ambiguous captions and wrong ones draw from here.
CONFUSABLE = {
    "adipose tissue": ("background", "mucus"),
    "background": ("adipose tissue", "mucus"),
    "debris": ("lymphocytes", "tumour epithelium", "mucus"),
    "lymphocytes": ("debris", "tumour epithelium"),
    "mucus": ("background", "debris", "cancer-associated stroma"),
    "smooth muscle": ("cancer-associated stroma",),
    "normal mucosa": ("tumour epithelium",),
    "cancer-associated stroma": ("smooth muscle", "mucus"),
    "tumour epithelium": ("normal mucosa", "debris", "lymphocytes"),
}
NAMED_TEMPLATES = (
    "{name}.",
    "H&E, {organ}: {name}.",
    "{name} in a {organ} resection.",
    "{organ} biopsy showing {name}, {look}.",
    "micrograph of {name}.",
    "{name}; {look}.",
    "histology of {organ} with {name}.",
    "a patch of {name} from the {organ}.",
)
LOOK_TEMPLATES = ("{organ} tissue with {look}.", "H&E section: {look}.", "{look}, {organ}.")
AMBIGUOUS_TEMPLATES = ("{name} or {other}?", "{name} next to {other}, {organ}.", "{other} versus {name}, hard to tell.")
BARE_TEMPLATES = ("H&E section of the {organ}, 20x.", "{organ} specimen, hematoxylin and eosin.", "slide from the {organ} archive.")
# share of each kind of pathology caption: named, look-only, ambiguous, bare, wrong
KIND_NAMES = ("named", "look", "ambiguous", "bare", "wrong")
KIND_SHARES = (0.55, 0.20, 0.10, 0.11, 0.04)

GENERIC_LOOKS = {
    "adipose tissue": (("white", "pale"), ("thin lines around big empty bubbles", "a honeycomb of large cells")),
    "background": (("white", "blank"), ("almost nothing", "a few faint specks")),
    "debris": (("pink and purple", "mottled"), ("scattered dark crumbs", "grainy speckles")),
    "lymphocytes": (("dark purple", "deep blue"), ("tiny dots everywhere", "crowded small dots")),
    "mucus": (("pale blue", "greyish"), ("faint wisps", "soft streaks")),
    "smooth muscle": (("bright pink", "red"), ("long straight stripes", "parallel bands")),
    "normal mucosa": (("pink and purple", "violet"), ("rings of dots around holes", "round holes")),
    "cancer-associated stroma": (("pink", "rosy"), ("wavy lines", "loose wavy stripes")),
    "tumour epithelium": (("purple", "dark violet"), ("many big blobs", "crowded large dots")),
}
GENERIC_TEMPLATES = ("a {tone} image with {texture}.", "a picture of {texture}, mostly {tone}.", "{texture} in {tone} tones.")


def pathology_captions(labels: np.ndarray, organs: list[str], classes: tuple[str, ...], rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """``(captions, kinds)``: a caption per sample and the index of its kind in :data:`KIND_NAMES`.

    Every choice is drawn up front as integer/uniform arrays so the captions depend only on
    the stream, not on the order of string operations.
    """
    n = len(labels)
    kinds = np.searchsorted(np.cumsum(KIND_SHARES), rng.random(n) * np.sum(KIND_SHARES), side="right")
    kinds = np.minimum(kinds, len(KIND_SHARES) - 1)
    picks = rng.integers(0, 1 << 30, size=(n, 5))
    captions = []
    for i in range(n):
        cls = classes[labels[i]]
        kind = KIND_NAMES[kinds[i]]
        p = picks[i]
        if kind == "wrong":
            others = [c for c in CONFUSABLE[cls] if c in classes] or [c for c in classes if c != cls]
            cls = others[p[4] % len(others)]
            kind = "named"
        names, looks = NAMES[cls], LOOKS[cls]
        # the class name itself in half of the named captions, a synonym otherwise
        name = names[0] if p[0] % 2 == 0 else names[1 + p[0] // 2 % (len(names) - 1)]
        look = looks[p[1] % len(looks)]
        if kind == "named":
            template = NAMED_TEMPLATES[p[2] % len(NAMED_TEMPLATES)]
            text = template.format(name=name, organ=organs[i], look=look)
        elif kind == "look":
            text = LOOK_TEMPLATES[p[2] % len(LOOK_TEMPLATES)].format(organ=organs[i], look=look)
        elif kind == "ambiguous":
            others = [c for c in CONFUSABLE[cls] if c in classes] or [c for c in classes if c != cls]
            other = NAMES[others[p[3] % len(others)]][0]
            first, second = (name, other) if p[4] % 2 == 0 else (other, name)
            text = AMBIGUOUS_TEMPLATES[p[2] % len(AMBIGUOUS_TEMPLATES)].format(name=first, other=second, organ=organs[i])
        else:
            text = BARE_TEMPLATES[p[2] % len(BARE_TEMPLATES)].format(organ=organs[i])
        captions.append(text[0].upper() + text[1:] if p[3] % 3 == 0 else text)
    return captions, kinds


def generic_captions(labels: np.ndarray, classes: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    picks = rng.integers(0, 1 << 30, size=(len(labels), 3))
    out = []
    for label, p in zip(labels, picks):
        tones, textures = GENERIC_LOOKS[classes[label]]
        template = GENERIC_TEMPLATES[p[0] % len(GENERIC_TEMPLATES)]
        out.append(template.format(tone=tones[p[1] % len(tones)], texture=textures[p[2] % len(textures)]))
    return out
