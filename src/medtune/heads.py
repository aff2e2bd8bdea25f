"""Heads: what a method trained, as a module from image features to class logits.

Every frozen-feature method turns training features into a *head* state (a dict of
plain tensors and numbers, saved as ``head.pt`` and loadable with
``weights_only=True``) whose ``module`` key names the method module that rebuilds it.
Evaluation only ever calls :func:`load_head`, whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from medtune.registry import import_module


@dataclass
class FitData:
    train_features: np.ndarray
    train_labels: np.ndarray
    val_features: np.ndarray
    val_labels: np.ndarray
    class_text: np.ndarray  # C x D normalised class-prompt features
    logit_scale: float
    # only for methods whose SPEC says needs_text_encoder: the frozen backbone and the
    # words of each class (in label order) that its prompts are built from
    backbone: Any = None
    class_names: Sequence[str] = ()


def fit(method: str, data: FitData, params: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(head_state, info)``: the saved head and what training chose and measured.

    ``method``: a configured method's ``module`` (dotted name or file), or a registered name.
    """
    from medtune.methods import registered

    module = method if "." in method else registered()[method].source
    state, info = import_module(module).fit(data, params, seed)
    return {**state, "module": module}, info


def refine(method: str, base_state: dict[str, Any], data: FitData, params: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(head_state, info)`` of a transductive stage (``training: transductive``) on top of the
    head ``base_state`` of another method's run; ``data`` holds that run's training images."""
    from medtune.methods import registered

    module = method if "." in method else registered()[method].source
    state, info = import_module(module).refine(base_state, data, params, seed)
    return {**state, "module": module}, info


def build_head(state: dict[str, Any]) -> torch.nn.Module:
    return import_module(state["module"]).build_head(state).eval()


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
