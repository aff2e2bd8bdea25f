"""Figure 2, corrupted-evaluation throughput: ``encode_images`` under every condition vs the bare encoder."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from medtune.bench.figure import Figure
from medtune.bench.machine import sync
from medtune.conditions import parse_condition


def bench_corrupt_throughput(
    backbone,
    images: np.ndarray,
    indices: np.ndarray,
    conditions: Sequence[str] | None = None,
    device="cpu",
    batch_size: int = 256,
    repeats: int = 3,
) -> dict[str, Any]:
    """encode_images over ``conditions`` vs the bare encoder's forward on the same prepared batches.

    The two are interleaved condition by condition: encode_images runs on a model whose every
    forward is followed by the bare forward of the same batch, prepared beforehand, timed apart
    and taken out of encode_images' time. On a shared 2-core machine the speed of both drifts by
    10-20 % within seconds; side by side at the grain of one forward, the drift falls on both alike.
    ``repeats`` times, the fastest of each kept; then each condition's corruption is timed alone.
    """
    import dataclasses

    import torch

    from medtune.conditions import ALL_CONDITIONS
    from medtune.encode import encode_images
    from medtune.preprocess import normalize, resize_crop, to_device_batch

    conditions = list(conditions or ALL_CONDITIONS)
    device = torch.device(device)
    indices = np.asarray(indices)
    n = len(indices) * len(conditions)

    with torch.inference_mode():
        # warm-up: first calls allocate, pick kernels, build the markup grids
        encode_images(backbone, images, indices[: min(len(indices), 8)], conditions, device, batch_size, progress=False)
        sync(device)

        # the same batches, already moved, resized and normalised, for the encoder forward alone
        keys, resized, prepared = [], [], []
        t0 = time.perf_counter()
        for s in range(0, len(indices), batch_size):
            idx = indices[s : s + batch_size]
            resized.append(resize_crop(to_device_batch(images[idx], device), backbone.image_size))
            keys.append(torch.as_tensor(idx, device=device))
        sync(device)
        prepare_s = time.perf_counter() - t0
        prepared = [normalize(x, backbone.mean, backbone.std) for x in resized]
        sync(device)

        full_s = bare_s = float("inf")
        per_condition = {c: float("inf") for c in conditions}
        for _ in range(max(1, repeats)):
            beside = _BareBeside(backbone.model, prepared, len(conditions), device)
            t0 = time.perf_counter()
            encode_images(dataclasses.replace(backbone, model=beside), images, indices, conditions, device, batch_size, progress=False)
            sync(device)
            full_s = min(full_s, time.perf_counter() - t0 - beside.bare_s)
            bare_s = min(bare_s, beside.bare_s)
            spent = _corruptions_s(resized, keys, conditions, device)
            per_condition = {c: min(per_condition[c], spent[c]) for c in conditions}

    return {
        "conditions": len(conditions),
        "images": len(indices),
        "image_size": backbone.image_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "full_s": full_s,
        "bare_s": bare_s,
        "prepare_s": prepare_s,
        "corrupt_s": sum(per_condition.values()),
        "full_rate": n / full_s,
        "bare_rate": n / bare_s,
        "ratio": bare_s / full_s,
        "per_condition_s": per_condition,
    }


class _BareBeside:
    """The model as encode_images sees it, with the bare forward of the same batch after each of its
    forwards: seconds of the bare forwards in ``bare_s``, the features encode_images gets untouched."""

    def __init__(self, model, prepared: list, conditions: int, device) -> None:
        self.model, self.prepared, self.conditions, self.device = model, prepared, conditions, device
        self.calls, self.bare_s = 0, 0.0

    def encode_image(self, x):
        import torch

        feats = self.model.encode_image(x)
        sync(self.device)  # encode_images' forward is done before the bare one starts
        batch = self.prepared[self.calls // self.conditions]
        self.calls += 1
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            self.model.encode_image(batch)
        sync(self.device)
        self.bare_s += time.perf_counter() - t0
        return feats

    def __getattr__(self, name: str):  # anything else encode_images asks of the model
        return getattr(self.model, name)


def _corruptions_s(resized: list, keys: list, conditions: Sequence[str], device) -> dict[str, float]:
    """Where the difference goes: seconds of each condition's corruption alone on the resized batches,
    as encode_images runs them (the levels of a corruption sharing their work)."""
    from medtune.corrupt import apply_many

    spent = dict.fromkeys(conditions, 0.0)
    for x, k in zip(resized, keys):
        corrupted = apply_many(x, conditions, keys=k)
        for condition in conditions:
            t0 = time.perf_counter()
            next(corrupted)
            sync(device)
            spent[condition] += time.perf_counter() - t0
    return spent


def corrupt_figure(r: dict[str, Any]) -> Figure:
    corrupt_s = r["corrupt_s"]
    by_kind: dict[str, float] = {}
    for c, s in r["per_condition_s"].items():
        kind = parse_condition(c)[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + s
    top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:4]
    details = [
        f"{r['conditions']} conditions x {r['images']} images at {r['image_size']} px, batch {r['batch_size']}, best of "
        f"{r['repeats']}: "
        f"encode_images {r['full_s']:.2f} s ({r['full_rate']:.0f} img/s) vs bare forward {r['bare_s']:.2f} s "
        f"({r['bare_rate']:.0f} img/s)",
        f"corruptions alone {corrupt_s:.2f} s ({corrupt_s / r['full_s']:.0%} of encode_images); "
        f"moving + resizing the batches once {r['prepare_s']:.2f} s",
        "slowest corruptions (all severities): " + ", ".join(f"{k} {s:.2f} s" for k, s in top),
    ]
    return Figure("corrupt_throughput", f"corrupted-evaluation throughput ({r['conditions']} conditions)", r["ratio"],
                  f"{r['ratio']:.2f} of the bare encoder", details, {"result": r})
