"""Full contrastive fine-tuning of both towers (seed 001; FLYP-style), with WiSE-FT.

The text of each training image is either its caption or its class-label prompt
(``text: caption | label``) — the seed's comparison. A label prompt is drawn per
image and epoch from every prompt template of the dataset (seeded), so training
sees all the wordings evaluation averages over, not only the first. The checkpoint
kept is the one with the lowest validation contrastive loss, the pretrained model
included as a candidate, so fine-tuning can never make the kept model worse on
validation. WiSE-FT interpolates weights between the pretrained and the kept model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from medtune.contrastive import (
    VALIDATION_STREAM,
    ContrastiveConfig,
    contrastive_loss,
    draw_texts,
    text_table,
    train_contrastive,
)
from medtune.encode import class_prompts
from medtune.io import save_torch
from medtune.models import Backbone

SPEC = {
    "training": "backbone",
    "requires": ["text_tower", "open_clip_towers"],
    "label": "full fine-tuning",
    "order": 70,
    "defaults": {
        "text": "label",
        "epochs": 20,
        "batch_size": 256,
        "lr": 1e-6,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "augment": False,
        "amp": True,
        "grad_accum": 1,
        "wise_alphas": [0.5],
    },
    "params": {
        "text": {"enum": ["caption", "label"], "description": "each training image's text: its caption or its class-label prompt"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "passes over the training pairs; the checkpoint with the lowest validation loss is kept"},
        "batch_size": {
            "type": "integer",
            "minimum": 2,
            "description": "the contrastive batch (each pair's negatives are the rest of its batch) and one optimiser step; grad_accum does not change it",
        },
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "AdamW peak learning rate (FLYP: 1e-6 on ViT-B/16)"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "AdamW weight decay"},
        "warmup_steps": {
            "type": "integer",
            "minimum": 0,
            "description": "linear warm-up steps before the cosine decay (FLYP uses 500); capped at the run's optimiser steps - 1",
        },
        "augment": {"type": "boolean", "description": "random flips and quarter turns of the training images (tissue has no canonical orientation)"},
        "amp": {"type": "boolean", "description": "mixed precision on CUDA"},
        "grad_accum": {
            "type": "integer",
            "minimum": 1,
            "description": "split each batch into this many micro-batches of batch_size/grad_accum to save GPU memory; the loss and "
            "gradients stay those of the whole batch (open_clip_train's accum_freq feature caching), so raise it when out of memory",
        },
        "wise_alphas": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
            "description": "WiSE-FT mixing ratios evaluated besides 1.0",
        },
    },
}


DEFAULT_TEMPLATE = "a histopathology image of {c}."


def training_texts(
    rows: pd.DataFrame, text: str, templates: Sequence[str], classnames: dict | None = None
) -> list[str] | list[tuple[str, ...]]:
    """Each row's caption, or its label in every template (the candidates one is drawn from)."""
    if text == "caption":
        captions = rows["caption"].tolist()
        missing = rows.loc[rows["caption"] == "", "index"]
        if len(missing):
            raise ValueError(f"sample {int(missing.iloc[0])} has no caption; text: caption needs one for every image")
        return captions
    if text == "label":
        templates = [templates] if isinstance(templates, str) else list(templates)
        names = sorted(set(rows["label_name"]))
        prompts = {name: tuple(p) for name, p in zip(names, class_prompts(names, templates, classnames))}
        return [prompts[name] for name in rows["label_name"]]
    raise ValueError(f"unknown fine-tuning text {text!r}; expected 'caption' or 'label'")


def fixed_draw(texts: Sequence[str | Sequence[str]], seed: int) -> list[str]:
    """One candidate per row, the same every epoch: validation losses stay comparable."""
    vocab, table, counts = text_table(texts)
    return [vocab[i] for i in draw_texts(table, counts, seed, epoch=0, stream=VALIDATION_STREAM)]


def wise_ft(pretrained: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * pretrained + alpha * tuned, per tensor; alpha 0 and 1 give the endpoints exactly."""
    out = {}
    for key, theta0 in pretrained.items():
        theta1 = tuned[key]
        out[key] = (1 - alpha) * theta0 + alpha * theta1 if theta0.is_floating_point() else theta1
    return out


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def finetune(
    backbone: Backbone,
    images: np.ndarray,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    params: dict[str, Any],
    seed: int,
    device: torch.device,
    state_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune ``backbone.model`` in place; returns (pretrained weights, kept weights, what happened).

    Resumable: with ``state_dir`` the last epoch's state and the best weights so
    far live there, outside the job's outputs.
    """
    templates = params.get("templates") or [params.get("template", DEFAULT_TEMPLATE)]
    texts = training_texts(train_rows, params["text"], templates, params.get("classnames"))
    val_texts = fixed_draw(training_texts(val_rows, params["text"], templates, params.get("classnames")), seed)
    val_idx = val_rows["index"].to_numpy()
    device = torch.device(device)
    state_dir = Path(state_dir) if state_dir else None
    best_path = state_dir / "best.pt" if state_dir else None

    def val_loss() -> float:
        return contrastive_loss(backbone, images, val_idx, val_texts, device)

    pretrained = cpu_state(backbone.model)
    pretrained_loss = val_loss()
    best = {"loss": pretrained_loss, "epoch": 0, "weights": pretrained}
    if best_path is not None and best_path.exists():  # a resumed job: the best so far survives
        saved = torch.load(best_path, map_location="cpu", weights_only=True)
        best = {"loss": saved["loss"], "epoch": saved["epoch"], "weights": saved["weights"]}

    def on_epoch_end(epoch: int, model) -> dict:
        loss = val_loss()
        if loss < best["loss"]:
            best.update(loss=loss, epoch=epoch + 1, weights=cpu_state(model))
            if best_path is not None:
                save_torch({"loss": loss, "epoch": epoch + 1, "weights": best["weights"]}, best_path)
        return {"val_loss": loss}

    cfg = ContrastiveConfig(
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        weight_decay=params["weight_decay"],
        warmup_steps=params.get("warmup_steps", 0),
        augment=params.get("augment", False),
        seed=seed,
        grad_accum=params.get("grad_accum", 1),
        amp=params.get("amp", True),
    )
    history = train_contrastive(
        backbone,
        images,
        train_rows["index"].to_numpy(),
        texts,
        cfg,
        device,
        state_path=state_dir / "resume_state.pt" if state_dir else None,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    info = {
        "history": history,
        "pretrained_val_loss": pretrained_loss,
        "chosen_epoch": best["epoch"],  # 0 = the pretrained model
        "chosen_val_loss": best["loss"],
    }
    return pretrained, best["weights"], info


def tune(backbone: Backbone, images, train_rows, val_rows, params, prompts, seed, device, state_dir=None, progress=True):
    """The backbone-training entry point (see :mod:`medtune.adapt`): ``(pretrained, kept, info)``."""
    settings = {**params, "templates": prompts["templates"], "classnames": prompts.get("classnames") or {}}
    return finetune(backbone, images, train_rows, val_rows, settings, seed, device, state_dir, progress)


def mixes(pretrained: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], params: dict[str, Any]):
    """``(label suffix, weights)`` of each model to evaluate: the WiSE-FT mixes, then the kept model ("")."""
    for alpha in sorted(set(params.get("wise_alphas", [])) | {1.0}):
        yield ("" if alpha == 1 else f"+wise{alpha:g}"), wise_ft(pretrained, kept, alpha)
