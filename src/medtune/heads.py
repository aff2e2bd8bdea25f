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
    # C x D normalised class-prompt features and the backbone's logit scale: given to the methods
    # whose SPEC requires "text_tower", None for the others (and on a backbone without one)
    class_text: np.ndarray | None = None
    logit_scale: float | None = None
    # only for methods whose SPEC says needs_text_encoder: the frozen backbone and the
    # words of each class (in label order) that its prompts are built from
    backbone: Any = None
    class_names: Sequence[str] = ()
    # how many classes the dataset has (labels 0..C-1), whether or not every one is in the subset;
    # taken from class_text (or class_names) when not given; 0: not known (see class_count)
    n_classes: int = 0

    def __post_init__(self) -> None:
        if not self.n_classes and self.class_text is not None:
            self.n_classes = int(np.asarray(self.class_text).shape[0])
        elif not self.n_classes and len(self.class_names):
            self.n_classes = len(self.class_names)

    def class_count(self) -> int:
        """The number of classes, for a method that reads no class text (linear probe, kNN, SimpleShot)."""
        if not self.n_classes:
            raise ValueError("FitData knows no class count: give n_classes (or class_text)")
        return self.n_classes


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
