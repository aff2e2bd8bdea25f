"""Shared pieces of every training loop: seeding, a finite-loss guard, resumable state,
and the cost record each run writes to ``train.json``."""

from __future__ import annotations

import math
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


class _FunctionalOptimizer:
    """What :class:`FunctionalAdam` and :class:`FunctionalSGD` share: their parameters, ``zero_grad``
    as the optimizer classes do it (gradients set to None), and which parameters a step updates
    (those with a gradient, as the classes skip the others)."""

    def __init__(self, params) -> None:
        self.params = [p for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _live(self) -> list[int]:
        return [i for i, p in enumerate(self.params) if p.grad is not None]


class FunctionalAdam(_FunctionalOptimizer):
    """``torch.optim.Adam`` (its defaults, L2 ``weight_decay``), or ``torch.optim.AdamW`` with
    ``decoupled=True``, as its own update function, ``torch.optim.adam.adam``, without the
    optimizer class.

    ``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is built and at every
    ``step`` (to mark the step as not compilable), 2-3 s of a job whose fits from cached
    features take a second. The update is the same function on the same state, so the
    parameters come out bit-identical (``tests/test_rfc.py`` checks it against
    ``torch.optim.Adam`` and ``torch.optim.AdamW``). ``lr`` may be changed between steps.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 decoupled: bool = False) -> None:
        super().__init__(params)
        self.lr, self.weight_decay, self.betas, self.eps, self.decoupled = lr, weight_decay, betas, eps, decoupled
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.tensor(0.0, dtype=torch.get_default_dtype()) for _ in self.params]

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.adam import adam

        live = self._live()
        pick = lambda items: [items[i] for i in live]  # noqa: E731
        adam(
            pick(self.params), [self.params[i].grad for i in live], pick(self.exp_avgs), pick(self.exp_avg_sqs), [],
            pick(self.steps), foreach=None, fused=None, has_complex=any(torch.is_complex(p) for p in self.params),
            decoupled_weight_decay=self.decoupled, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
            weight_decay=self.weight_decay, eps=self.eps, maximize=False,
        )


class FunctionalSGD(_FunctionalOptimizer):
    """``torch.optim.SGD`` (momentum without dampening or Nesterov, L2 ``weight_decay``) as its
    own update function, ``torch.optim.sgd.sgd``, without the optimizer class that imports
    ``torch._dynamo`` (see :class:`FunctionalAdam`); bit-identical to it
    (``tests/test_rfc.py``). ``lr`` may be changed between steps."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)  # created at a parameter's first step

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.sgd import sgd

        live = self._live()
        buffers = [self.buffers[i] for i in live]
        sgd(
            [self.params[i] for i in live], [self.params[i].grad for i in live], buffers, foreach=None, fused=None,
            weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False,
            maximize=False,
        )
        if self.momentum != 0:
            for i, buffer in zip(live, buffers):  # sgd() fills in the buffers it created
                self.buffers[i] = buffer


def cosine_lrs(base_lr: float, t_max: int, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimiser steps under
    ``torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t_max)`` (``eta_min`` 0) stepped
    after every optimiser step, computed as it computes them (its recursive form, so equal to
    the float), without an optimizer object to attach it to (see :class:`FunctionalAdam`)."""
    lrs, lr = [], float(base_lr)
    for epoch in range(steps):
        if epoch > 0:
            if (epoch - 1 - t_max) % (2 * t_max) == 0:
                lr = lr + base_lr * (1 - math.cos(math.pi / t_max)) / 2
            else:
                lr = (1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max)) * lr
        lrs.append(lr)
    return lrs


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def history_record(history: dict[str, list], steps: int) -> dict[str, Any]:
    """A trained head's curves for its run record: optimiser steps, the last epoch's training loss
    (None before any epoch), training loss and validation accuracy per epoch."""
    return {
        "steps": steps,
        "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "train_loss_by_epoch": history["train_loss"],
        "val_accuracy_by_epoch": history["val_accuracy"],
    }


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
