"""PathoROB's centre-shift robustness index of a backbone's embeddings (Kömen et al. 2025,
``bifold-pathomics/PathoROB``, ``pathorob/robustness_index/robustness_index.py`` and
``robustness_index_utils.py``).

Every image's nearest neighbours among the other images of the set (cosine similarity of the
L2-normalised embeddings, which ranks as PathoROB's Euclidean distance on them does) are
counted by kind: **SO**, same class from another centre (site), and **OS**, another class from
the same centre. Summed over images and over the first k neighbours,

    RI(k) = sum SO / (sum SO + sum OS),

1 when class decides an image's neighbours whatever its centre, 0 when the centre does. It is
reported at ``k_opt``, the k of PathoROB's grid (1, 3, 5, 7, 9, 11, 21, ... below ``k_max``)
whose majority-vote kNN classifier (ties to the lower label, as ``scipy.stats.mode``) has the
highest balanced accuracy on the same images, and its standard deviation over bootstrap
resamples of the images (rows; ``ddof=1``; seeded here, unseeded there).

PathoROB also drops neighbours from the query's own slide; medtune stores no slide, so only the
query itself is left out. Pure numpy: the job that runs it does not import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK = 1024  # query rows per similarity block: CHUNK x N floats at a time, never N x N


def k_grid(k_max: int) -> list[int]:
    """PathoROB's ``get_k_values``: 1, 3, 5, 7, 9, then every 10th from 11, below ``k_max``; only k <= k_max kept."""
    return [k for k in [1, 3, 5, 7, 9, *range(11, k_max, 10)] if k <= k_max]


def nearest_neighbours(features: np.ndarray, k: int) -> np.ndarray:
    """N x k indices of each row's k most cosine-similar other rows, most similar first (ties: lower index)."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"{k} neighbours asked of {n} images; each image has {n - 1} others")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, CHUNK):
        sim = x[start : start + CHUNK] @ x.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf  # not its own neighbour
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -values), axis=1)  # by similarity, then index
        out[start : start + len(sim)] = np.take_along_axis(part, order, axis=1)
        # a row with more columns as similar as its k-th than places left may have lost a lower index
        # to the partition: such rows (ties; rare with real-valued features) are ranked in full
        crowded = np.flatnonzero((sim >= values.min(axis=1, keepdims=True)).sum(axis=1) > k)
        for r in crowded:
            out[start + r] = np.lexsort((np.arange(n), -sim[r]))[:k]
    return out


def majority_vote(neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The most frequent label of each row, the lowest label among ties (``scipy.stats.mode``'s rule)."""
    counts = np.zeros((len(neighbour_labels), n_classes), dtype=np.int64)
    np.add.at(counts, (np.arange(len(neighbour_labels))[:, None], neighbour_labels), 1)
    return counts.argmax(axis=1)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn's ``balanced_accuracy_score``)."""
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def pick_per_cell(labels: np.ndarray, sites: np.ndarray, per_cell: int | None, seed: int = 0) -> np.ndarray:
    """Positions of at most ``per_cell`` images of every (class, site) cell, a seeded draw (PathoROB's
    ``max_patches_per_combi``), in their original order; all images when ``per_cell`` is None."""
    if per_cell is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keys = np.array([f"{c}\0{s}" for c, s in zip(labels, sites)])
    kept = [rng.permutation(np.flatnonzero(keys == key))[:per_cell] for key in np.unique(keys)]
    return np.sort(np.concatenate(kept))


def robustness_index(
    features: np.ndarray, labels: np.ndarray, sites: np.ndarray, k_max: int = 600, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """RI at k_opt with its bootstrap standard deviation, and the curves behind it (see the module)."""
    labels, sites = np.asarray(labels), np.asarray(sites).astype(str)
    if len(np.unique(sites)) < 2:
        raise ValueError(f"the robustness index needs images of at least two sites; these {len(sites)} come from {sorted(set(sites.tolist()))}")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the robustness index needs at least two classes; these {len(labels)} images have one")
    ks = k_grid(min(k_max, len(labels) - 1))
    neighbours = nearest_neighbours(features, ks[-1])
    same_class = labels[neighbours] == labels[:, None]
    same_site = sites[neighbours] == sites[:, None]
    so = np.cumsum(same_class & ~same_site, axis=1)  # per image: SO among its first k, k = 1..k_max
    os_ = np.cumsum(~same_class & same_site, axis=1)
    total_so, total_os = so.sum(axis=0), os_.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = total_so / (total_so + total_os)
    n_classes = int(labels.max()) + 1
    accuracies = [balanced_accuracy(labels, majority_vote(labels[neighbours[:, :k]], n_classes)) for k in ks]
    k_opt = ks[int(np.argmax(accuracies))]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        weight = np.bincount(rng.integers(0, len(labels), len(labels)), minlength=len(labels))
        s, o = weight @ so[:, k_opt - 1], weight @ os_[:, k_opt - 1]
        boot[b] = s / (s + o) if s + o else np.nan
    return {
        "n_images": int(len(labels)),
        "sites": sorted(set(sites.tolist())),
        "k": ks,
        "balanced_accuracy": accuracies,
        "robustness_index_by_k": [float(curve[k - 1]) for k in ks],
        "k_opt": int(k_opt),
        "knn_balanced_accuracy": float(max(accuracies)),
        "robustness_index": float(curve[k_opt - 1]),
        "robustness_index_std": float(np.nanstd(boot, ddof=1)) if n_bootstrap > 1 else float("nan"),
        "n_bootstrap": int(n_bootstrap),
    }


def index_job(features_dir, samples, split: str, settings: dict[str, Any], identity: dict[str, Any], out) -> None:
    """The ``robustness_index`` job: the index of one backbone's clean ``split`` features, as JSON at ``out``."""
    from pathlib import Path

    from medtune.data.store import SITE, DatasetError, read_samples
    from medtune.io import write_json
    from medtune.jobs import report

    table = read_samples(samples)
    if SITE not in table.columns:
        raise DatasetError(f"{samples} has no {SITE} column: the robustness index needs each image's centre "
                           "(the synthetic and camelyon17 sources write it; a manifest may carry one)")
    rows = table[table["split"] == split].reset_index(drop=True)
    features = np.load(Path(features_dir) / "clean.npy", mmap_mode="r")
    if len(features) != len(rows):
        raise DatasetError(f"{features_dir}/clean.npy has {len(features)} rows, split {split!r} has {len(rows)}")
    labels, sites = rows["label"].to_numpy(), rows[SITE].to_numpy()
    picked = pick_per_cell(labels, sites, settings.get("index_images_per_cell"), settings.get("index_seed", 0))
    result = robustness_index(np.asarray(features[picked]), labels[picked], sites[picked], settings["k_max"],
                              settings["bootstrap"], settings.get("index_seed", 0))
    write_json({**identity, "split": split, **result}, out)
    report(f"robustness index {result['robustness_index']:.3f} at k = {result['k_opt']} over {len(picked)} images of {split}")
