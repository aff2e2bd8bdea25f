"""Shared pieces of every training loop: seeding, a finite-loss guard, resumable state,
and the cost record each run writes to ``train.json``."""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and the setting to change."""


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_finite(loss: torch.Tensor, step: int, lr: float) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(f"loss became {loss.item()} at step {step} (learning rate {lr:g}); lower the learning rate")


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {requested!r} requested but CUDA is not available")
    return device


def count_trainable(params) -> int:
    return int(sum(p.numel() for p in params if p.requires_grad))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def cost_record(device: torch.device, seconds: float, trainable: int, images_seen: int) -> dict[str, Any]:
    return {
        "wall_seconds": round(seconds, 3),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_parameters": trainable,
        "images_seen": int(images_seen),
        "threads": torch.get_num_threads(),
        "host": os.uname().nodename,
    }


def load_resume_state(path: str | Path | None) -> dict[str, Any] | None:
    """The last epoch's state if an earlier attempt of this job was killed, else None.

    Only tensors, numbers, strings and plain containers are read back
    (``weights_only=True``): a resume file is never a way to run code.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or a truncated file: say which file to delete
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"resume state {path} cannot be read ({first}); delete it to start over") from err
