"""Image-to-image retrieval metrics, as PathCLIP reports them.

Every image is a query against all the others (cosine similarity; the query is
never its own candidate). HA@K ("hit all") is the share of queries whose K
nearest images all have the query's class; P@K is the mean share of the K
nearest that do. A query whose class has fewer than K other members cannot
reach HA@K = 1 and scores 0 there.

Ties are broken towards the lower candidate index. ``torch.topk`` makes no
promise about the order of equal values, so each similarity is computed in
float64, rounded to a multiple of 2**-32 (so identical features tie exactly,
whatever order the BLAS kernel summed in) and folded with the candidate index
into one int64 key that no two candidates share. Queries are scored in chunks,
so a 30k x 30k similarity matrix never exists at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_GRID = 2.0**32  # similarities rounded to 1/_GRID before ranking


def hit_all_at_k(features, labels, k: int, chunk_size: int = 512) -> float:
    """Share of queries whose top-``k`` neighbours all share the query's class."""
    return retrieval_metrics(features, labels, ks=(k,), chunk_size=chunk_size)[f"ha@{k}"]


def precision_at_k(features, labels, k: int, chunk_size: int = 512) -> float:
    """Mean over queries of the share of the top-``k`` neighbours in the query's class."""
    return retrieval_metrics(features, labels, ks=(k,), chunk_size=chunk_size)[f"p@{k}"]


def retrieval_metrics(features, labels, ks: Sequence[int] = (5, 10), chunk_size: int = 512) -> dict[str, float]:
    """``{"ha@5", "ha@10", "p@5", "p@10"}`` (for the default ``ks``) from one ranking pass."""
    features = torch.as_tensor(features)
    labels = _labels(labels, features.device)
    if features.dim() != 2 or len(labels) != len(features):
        raise ValueError(f"need N x D features and N labels, got {tuple(features.shape)} and {len(labels)}")
    n = len(features)
    ks = [int(k) for k in ks]
    for k in ks:
        if not 1 <= k <= n - 1:
            raise ValueError(f"K={k} is outside 1..{n - 1}: each of the {n} queries has {n - 1} candidates")
    if n >= 2**30:
        raise ValueError(f"{n} images overflow the int64 ranking key; split the set")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    hits = _neighbour_hits(features, labels, max(ks), chunk_size)
    out = {f"ha@{k}": float(hits[:, :k].all(dim=1).double().mean()) for k in ks}
    out |= {f"p@{k}": float(hits[:, :k].double().mean()) for k in ks}
    return out


def _neighbour_hits(features: torch.Tensor, labels: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """N x k booleans: does each query's j-th nearest neighbour share its class."""
    n = len(features)
    feats = F.normalize(features.double(), dim=1)
    # Lower index ranks first among equal similarities: larger tie-break term.
    tie_break = torch.arange(n - 1, -1, -1, device=feats.device)
    lowest = torch.iinfo(torch.int64).min
    hits = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = feats[start:stop] @ feats.T  # chunk x n: 134 MB at chunk 512, n = 32,768
        # |rounded| <= 2**32 (plus rounding), times n < 2**30 still fits in int64. In place:
        # one chunk x n float64 and one int64 array at a time.
        key = sims.mul_(_GRID).round_().long()
        del sims
        key.mul_(n).add_(tie_break)
        rows = torch.arange(stop - start, device=feats.device)
        key[rows, rows + start] = lowest  # the query is not its own candidate
        nearest = key.topk(k, dim=1).indices
        hits.append(labels[nearest] == labels[start:stop, None])
    return torch.cat(hits)


def _labels(labels, device: torch.device) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        return labels.to(device).reshape(-1)
    values = np.asarray(labels).reshape(-1)
    if values.dtype.kind not in "biu":
        # Strings or other class names: only equality matters, so number them.
        values = np.unique(values, return_inverse=True)[1]
    return torch.tensor(values, device=device)  # a copy: pandas hands out read-only arrays
