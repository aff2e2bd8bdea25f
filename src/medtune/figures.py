"""What every figure shares: the palette, method labels, saving, a confusion matrix.

The figures themselves live in the study modules (:mod:`medtune.studies`).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medtune.io import atomic_path  # noqa: E402

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def label(methods: dict, method: str) -> str:
    """How a method (a WiSE-FT mix of one, ``finetune_label+wise0.5``, or a stage on one,
    ``linear_probe+transclip``) is named in legends."""
    base, plus, mix = method.partition("+")
    name = methods.get(base, {}).get("label", base)
    return f"{name} + {methods.get(mix, {}).get('label', mix)}" if plus else name


def save(fig, path) -> None:
    """PNG for screens and the report, and a PDF beside it for print."""
    for target in (str(path), str(path).rsplit(".", 1)[0] + ".pdf"):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=target.rsplit(".", 1)[-1], dpi=200, bbox_inches="tight")
    plt.close(fig)


def confusion(labels: np.ndarray, logits: np.ndarray, class_names: list[str], title: str, path) -> None:
    """Per-class confusion matrix (rows: true class, normalised per row)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ConfusionMatrixDisplay.from_predictions(
        labels, logits.argmax(1), labels=np.arange(len(class_names)), display_labels=class_names,
        normalize="true", values_format=".2f", cmap="Blues", ax=ax, colorbar=False,
    )
    ax.set_title(title, fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    save(fig, path)
