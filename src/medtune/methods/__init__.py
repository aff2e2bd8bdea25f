"""Adaptation methods over cached, L2-normalised image features.

Every method turns training features into a *head*: a small module mapping image
features to class logits, saved as ``head.pt`` (a dict of plain tensors and
numbers, loadable with ``weights_only=True``). Evaluation only ever calls
:func:`load_head`, whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class FitData:
    train_features: np.ndarray
    train_labels: np.ndarray
    val_features: np.ndarray
    val_labels: np.ndarray
    class_text: np.ndarray  # C x D normalised class-prompt features
    logit_scale: float


def _module(method: str):
    if method == "zeroshot":
        from medtune.methods import zeroshot as module
    elif method == "linear_probe":
        from medtune.methods import linear_probe as module
    elif method == "rfc":
        from medtune.methods import rfc as module
    elif method == "coop":
        from medtune.methods import coop as module
    else:
        raise ValueError(f"unknown method {method!r}")
    return module


def fit(method: str, data: FitData, params: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(head_state, info)``: the saved head and what training chose and measured."""
    return _module(method).fit(data, params, seed)


def build_head(state: dict[str, Any]) -> torch.nn.Module:
    return _module(state["method"]).build_head(state).eval()


def load_head(path) -> torch.nn.Module:
    return build_head(torch.load(path, map_location="cpu", weights_only=True))


def _tensor(features: np.ndarray) -> torch.Tensor:
    # cached features are memory-mapped read-only; torch wants memory it may write
    return torch.from_numpy(np.require(features, dtype=np.float32, requirements=["W"]))


@torch.inference_mode()
def predict(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    return head(_tensor(features)).numpy()


@torch.inference_mode()
def embed(head: torch.nn.Module, features: np.ndarray) -> torch.Tensor:
    return head.embed(_tensor(features))


def accuracy(head: torch.nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(head, features).argmax(1) == labels).mean())
