"""Pretrain a backbone contrastively on a dataset's (image, caption) pairs.

This is how the embedded default gets a CLIP that knows synthetic histology:
the tiny open_clip architecture trained from scratch on a split that evaluation
never sees.
"""

from __future__ import annotations

import os
from typing import Any

from pathlib import Path

from medtune import memory
from medtune.contrastive import ContrastiveConfig, train_contrastive
from medtune.data.store import DatasetError, load_dataset
from medtune.io import save_torch, write_json
from medtune.models import load_backbone
from medtune.training import Stopwatch, cost_record, count_trainable, resolve_device, seed_everything


def pretrain_backbone(
    name: str,
    spec: dict[str, Any],
    images: str,
    samples: str,
    weights_out: str,
    record_out: str,
    state_path: str | None,
    device: str = "auto",
    progress: bool = True,
) -> None:
    settings = dict(spec["pretrain"])
    dataset = load_dataset(os.path.dirname(images))
    split = settings.pop("split", "pretrain")
    rows = dataset.split(split)
    captions = rows["caption"].tolist()
    if any(not c for c in captions):
        raise DatasetError(f"{samples}: split {split!r} has samples without a caption; pretraining needs captions")
    settings.pop("dataset")
    cfg = ContrastiveConfig(**settings)
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    backbone = load_backbone(name, {k: v for k, v in spec.items() if k != "pretrain"}, device=str(dev))
    memory.announce(backbone, -(-cfg.batch_size // cfg.grad_accum), dev, training=True)
    clock = Stopwatch()
    history = train_contrastive(
        backbone, dataset.images, rows["index"].to_numpy(), captions, cfg, dev, state_path=state_path, progress=progress
    )
    save_torch({k: v.cpu() for k, v in backbone.model.state_dict().items()}, weights_out)
    record = {"history": history, "config": settings | {"split": split}}
    record.update(cost_record(dev, clock.seconds, count_trainable(backbone.model.parameters()), len(rows) * cfg.epochs))
    write_json(record, record_out)
    if state_path:
        Path(state_path).unlink(missing_ok=True)  # finished: nothing left to resume
