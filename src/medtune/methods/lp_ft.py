"""LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, ICLR 2022; ``AnanyaKumar/transfer_learning``,
``unlabeled_extrapolation/baseline_train.py`` with ``linear_probe_checkpoint_path``): linear
probing, then full fine-tuning of the image encoder and that probe together with a small
learning rate, so that the features move less than when a random head is fine-tuned along.

1. **LP.** The run's training images are encoded once by the pretrained image tower, as the
   cached features are (L2-normalised), and :func:`medtune.methods.linear_probe.fit` fits the
   probe (CLIP's protocol, the C chosen on validation; ``probe`` overrides its settings).
2. **FT.** ``logits = W · normalize(encode_image(x)) + b`` from that ``(W, b)``, cross-entropy,
   every parameter of the image tower and the head trained (the text tower is not used), SGD
   with momentum 0.9 and no weight decay under ``CosineAnnealingLR(T_max=epochs)`` stepped per
   epoch, batch 64 (upstream's ``resnet50_transfer.yaml`` / ``adaptation/*.yaml`` optimiser).
   Upstream has no fixed rate: it sweeps 3e-7 .. 1e-2 (``SWEEP_LRS``) and keeps the best on
   validation (for CLIP ViT-B/16 full fine-tuning it fixes 3e-6); the default 1e-5 lies in that
   sweep, and a config sweeps it with variants. After every epoch the model is scored on the validation split; the epoch with the
   best accuracy is kept, the LP solution (epoch 0) included, as upstream keeps its best
   checkpoint by validation accuracy (``keep: last``: the last epoch, upstream's ``LAST``).

The saved weights are the whole open_clip state dict plus the head (``lp_ft_head.weight``,
``lp_ft_head.bias``): :func:`split_head` separates them to evaluate, and a model soup of LP-FT
runs averages both alike. The test split is re-encoded by the tuned tower under every condition
and scored by the tuned head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods import linear_probe
from medtune.models import Backbone

SPEC = {
    "training": "backbone",
    "requires": ["open_clip_towers"],  # it trains and saves an open_clip model's own state dict
    "label": "LP-FT",
    "order": 72,
    "defaults": {
        "probe": {},
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-5,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "augment": False,
        "keep": "best",
    },
    "params": {
        "probe": {"type": "object", "description": "settings of the linear probe it starts from (linear_probe's parameters; its defaults else)"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "fine-tuning epochs after the probe (the best on validation is kept unless keep: last)"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "images a fine-tuning batch (upstream: 64)"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 10, "description": "fine-tuning learning rate for the tower and the head; upstream sweeps 3e-7 .. 1e-2"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum (upstream: 0.9)"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "SGD weight decay (upstream: 0)"},
        "augment": {"type": "boolean", "description": "random flips and quarter turns of the training images"},
        "keep": {"enum": ["best", "last"], "description": "the epoch kept: best validation accuracy (the probe's included) or the last"},
    },
}
HEAD = "lp_ft_head."


def split_head(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(the backbone's state dict, the head state evaluation builds)`` from a run's weights."""
    model = {k: v for k, v in weights.items() if not k.startswith(HEAD)}
    return model, {"module": __name__, "weight": weights[HEAD + "weight"], "bias": weights[HEAD + "bias"]}


def build_head(s: dict) -> nn.Module:
    return linear_probe.build_head(s)


def _features(backbone: Backbone, images, indices, device, batch_size: int) -> np.ndarray:
    from medtune.encode import encode_images

    return encode_images(backbone, images, indices, ["clean"], device, batch_size, progress=False)["clean"]


def _batch(backbone: Backbone, images, indices, device, augment: bool, generator) -> torch.Tensor:
    from medtune.contrastive import augment_batch
    from medtune.data.store import read_rows
    from medtune.preprocess import normalize, resize_crop, to_device_batch

    x = resize_crop(to_device_batch(read_rows(images, indices), device), backbone.image_size)
    if augment:
        x = augment_batch(x, generator)
    return normalize(x, backbone.mean, backbone.std)


def tune(backbone: Backbone, images, train_rows, val_rows, params, prompts, seed, device, state_dir=None, progress=True):
    """The backbone-training entry point (see :mod:`medtune.adapt`): ``(pretrained, kept, info)``."""
    from medtune.heads import FitData
    from medtune.methods.clip_lora import class_names
    from medtune.methods.finetune import cpu_state as cpu_state_of
    from medtune.training import check_finite, seed_everything

    p = {**SPEC["defaults"], **params}
    device = torch.device(device)
    gen = seed_everything(seed)
    model = backbone.model.to(device)
    n_classes = len(class_names(train_rows, val_rows))
    train_idx, val_idx = train_rows["index"].to_numpy(), val_rows["index"].to_numpy()
    train_y, val_y = train_rows["label"].to_numpy(), val_rows["label"].to_numpy()
    batch = int(p["batch_size"])

    model.eval()
    val_x = _features(backbone, images, val_idx, device, batch)
    data = FitData(_features(backbone, images, train_idx, device, batch), train_y, val_x, val_y,
                   np.zeros((n_classes, val_x.shape[1]), np.float32), backbone.logit_scale)
    probe, probe_info = linear_probe.fit(data, {**linear_probe.SPEC["defaults"], **p["probe"]}, seed)
    head = linear_probe.build_head(probe).to(device)
    pretrained = {**cpu_state_of(model), HEAD + "weight": probe["weight"].clone(), HEAD + "bias": probe["bias"].clone()}

    def val_accuracy() -> float | None:
        if not len(val_y):
            return None
        model.eval()
        with torch.no_grad():
            logits = head(torch.from_numpy(_features(backbone, images, val_idx, device, batch)).to(device))
        return float((logits.argmax(1).cpu().numpy() == val_y).mean())

    # every parameter: only the image tower's and the head's get gradients (the text tower is
    # never run), and SGD leaves a parameter without one as it is
    trained = list(model.parameters()) + list(head.parameters())
    for q in trained:
        q.requires_grad_(True)
    optimizer = torch.optim.SGD(trained, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    start = val_accuracy()
    best = {"accuracy": start, "epoch": 0, "weights": pretrained}
    history, step = [], 0
    labels = torch.as_tensor(train_y)
    for epoch in range(int(p["epochs"])):
        lr = p["lr"] * (1 + math.cos(math.pi * epoch / int(p["epochs"]))) / 2  # CosineAnnealingLR(T_max=epochs), per epoch
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(train_idx), generator=gen).numpy()
        losses = []
        for start_at in range(0, len(order), batch):
            sel = np.sort(order[start_at : start_at + batch])  # store order: memory-map locality
            x = _batch(backbone, images, train_idx[sel], device, bool(p["augment"]), gen)
            logits = head(F.normalize(model.encode_image(x).float(), dim=-1))
            loss = F.cross_entropy(logits, labels[sel].to(device))
            check_finite(loss, step, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        accuracy = val_accuracy()
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_accuracy": accuracy, "lr": lr})
        if p["keep"] == "last" or (accuracy is not None and (best["accuracy"] is None or accuracy > best["accuracy"])):
            weights = {**cpu_state_of(model), HEAD + "weight": head.weight.detach().cpu().clone(), HEAD + "bias": head.bias.detach().cpu().clone()}
            best = {"accuracy": accuracy, "epoch": epoch + 1, "weights": weights}
    model.eval()
    info = {
        "probe": {"C": probe_info["C"], "fits": probe_info["fits"]},
        "history": history,
        "probe_val_accuracy": start,
        "chosen_epoch": best["epoch"],  # 0 = the linear probe before fine-tuning
        "chosen_val_accuracy": best["accuracy"],
        "steps": step,
        "trainable_parameters": int(sum(q.numel() for q in trained if q.grad is not None)),
        "images_seen": int(len(train_idx) * int(p["epochs"])),
    }
    return pretrained, best["weights"], info


def mixes(pretrained: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], params: dict[str, Any]):
    """The kept model alone."""
    yield "", kept
