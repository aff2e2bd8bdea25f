"""Metrics of one run under every test condition, as tidy rows for ``results/metrics.csv``,
and the run's clean-test predictions (``predictions.npz``) for paired statistics.

Heads with an embedding (zero-shot: the backbone's own feature; RFC: the adapted one) also
get ``cosine_to_clean`` under each corrupted condition: how far corruption moves an image's
embedding (THUNDER's invariance), whatever it does to the class decision."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from medtune.heads import embed, load_head, predict
from medtune.io import atomic_path
from medtune.jobs import report
from medtune.metrics import classification_metrics, per_group_top_k
from medtune.retrieval import retrieval_metrics

RETRIEVAL_KS = (5, 10)
LOGITS = "logits.npz"
METRIC_COLUMNS = ["dataset", "method", "backbone", "seed", "fraction", "shots", "condition", "group", "metric", "value"]


def evaluate_head(head, features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Rows ``group, metric, value``; group ``all`` holds the overall metrics.

    Heads with an ``embed`` method (zero-shot: the backbone's own feature; RFC: the
    adapted feature) are also scored on image-image retrieval (HA@K, P@K); a head that only
    embeds (``classifies = False``: a backbone without a text tower) gets those alone. A K that
    needs more images than the test split has (K neighbours besides the query) is
    undefined: its rows are NaN, shown as "–" in the tables.
    """
    classifies = getattr(head, "classifies", True)
    logits = predict(head, features) if classifies else None
    overall = classification_metrics(labels, logits) if classifies else {}
    if hasattr(head, "embed"):
        fitting = [k for k in RETRIEVAL_KS if k < len(labels)]
        found = retrieval_metrics(embed(head, features), labels, ks=fitting) if fitting else {}
        overall |= {f"{name}@{k}": found.get(f"{name}@{k}", float("nan")) for name in ("ha", "p") for k in RETRIEVAL_KS}
    overall = pd.DataFrame([("all", name, value) for name, value in overall.items()], columns=["group", "metric", "value"])
    if not classifies:
        return overall
    return pd.concat([overall, per_group_top_k(labels, logits, groups)], ignore_index=True)


def cosine_to_clean(clean, corrupted) -> float:
    """THUNDER's embedding invariance: the mean over images of the cosine similarity between an
    image's clean and corrupted embedding (N x D each)."""
    import torch.nn.functional as F

    return float(F.cosine_similarity(torch.as_tensor(clean), torch.as_tensor(corrupted), dim=1).mean())


def evaluate_run(
    head_path: str | Path,
    features_dir: str | Path,
    test_samples: pd.DataFrame,
    conditions: Iterable[str],
    run: dict,
) -> pd.DataFrame:
    """Metrics of a saved head on the cached test features of every condition."""
    features = {c: np.load(Path(features_dir) / f"{c}.npy", mmap_mode="r") for c in conditions}
    return evaluate_features(load_head(head_path), features, test_samples, run)


def evaluate_features(head, features: Mapping[str, np.ndarray], test_samples: pd.DataFrame, run: dict) -> pd.DataFrame:
    """Tidy rows of every condition, each carrying the run's labels (:meth:`medtune.plan.Run.labels`)."""
    labels = test_samples["label"].to_numpy()
    groups = test_samples["group"].astype(str).to_numpy()
    too_few = [k for k in RETRIEVAL_KS if k >= len(labels)]
    if too_few and hasattr(head, "embed"):
        report(
            f"the test split has {len(labels)} images; retrieval at K = {', '.join(map(str, too_few))} needs "
            f"at least K + 1, so HA@K and P@K there are undefined (NaN in metrics.csv)"
        )
    clean = embed(head, features["clean"]) if "clean" in features and hasattr(head, "embed") else None
    frames = []
    for condition, array in features.items():
        if len(array) != len(labels):
            raise ValueError(f"features of condition {condition!r} have {len(array)} rows, the test split {len(labels)}")
        rows = evaluate_head(head, array, labels, groups)
        if clean is not None and condition != "clean":
            rows.loc[len(rows)] = ("all", "cosine_to_clean", cosine_to_clean(clean, embed(head, array)))
        rows.insert(0, "condition", condition)
        frames.append(rows)
    out = pd.concat(frames, ignore_index=True)
    for i, key in enumerate(["dataset", "method", "backbone", "seed", "fraction", "shots"]):
        out.insert(i, key, run.get(key))
    return out[METRIC_COLUMNS]


def write_predictions(head, features: Mapping[str, np.ndarray], test_samples: pd.DataFrame, path) -> None:
    """The head's logits on the clean test split, with each image's label and sample index:
    what paired comparisons between runs (:mod:`medtune.significance`) resample."""
    if "clean" not in features:
        raise ValueError(f"no clean test features to write {path} from (conditions: {list(features)})")
    logits = predict(head, features["clean"])
    if len(logits) != len(test_samples):
        raise ValueError(f"clean test features have {len(logits)} rows, the test split {len(test_samples)}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, logits=logits, labels=test_samples["label"].to_numpy(), index=test_samples["index"].to_numpy())


def write_logits(head, val_features: np.ndarray, val_rows: pd.DataFrame, test_features: Mapping[str, np.ndarray],
                 test_rows: pd.DataFrame, train_sites, path) -> None:
    """What the conformal and centre-shift tables read of a run, so that no job runs a head again: its
    logits on the clean validation split (``val_*``) and on the test split under every condition
    (``test_logits``: conditions x N x C, in the order of ``conditions``), with labels, sample indices,
    each image's site and the training split's sites where the dataset has a ``site`` column."""
    arrays = {
        "val_logits": predict(head, val_features), "val_labels": val_rows["label"].to_numpy(), "val_index": val_rows["index"].to_numpy(),
        "conditions": np.array(list(test_features)), "test_logits": np.stack([predict(head, f) for f in test_features.values()]),
        "test_labels": test_rows["label"].to_numpy(), "test_index": test_rows["index"].to_numpy(),
    }
    if "site" in val_rows.columns:
        arrays |= {"val_site": val_rows["site"].to_numpy(str), "test_site": test_rows["site"].to_numpy(str),
                   "train_sites": np.array(sorted(set(train_sites)), dtype=str)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
