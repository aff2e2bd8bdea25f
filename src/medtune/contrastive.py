"""CLIP contrastive training of both towers on image-text pairs.

One loop serves the tiny backbone's pretraining and full fine-tuning (seed 001;
FLYP-style): open_clip's ``ClipLoss`` — (image->text CE + text->image CE) / 2 —
with open_clip_train's warm-up + cosine schedule. The state is saved after every
epoch so a killed job resumes where it stopped and ends with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from medtune.io import save_torch
from medtune.models import Backbone
from medtune.preprocess import normalize, resize_crop, to_device_batch
from medtune.training import TrainingError, check_finite, load_resume_state


@dataclass(frozen=True)
class ContrastiveConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    augment: bool = True
    seed: int = 0
    grad_accum: int = 1
    amp: bool = True  # used on CUDA only


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: tissue has no canonical orientation."""
    flips = torch.randint(0, 2, (2,), generator=generator).tolist()
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    if flips[0]:
        x = x.flip(-1)
    if flips[1]:
        x = x.flip(-2)
    return torch.rot90(x, turns, dims=(-2, -1))


def contrastive_loss_on(backbone: Backbone, images: torch.Tensor, tokens: torch.Tensor, loss_fn) -> torch.Tensor:
    out = backbone.model(normalize(images, backbone.mean, backbone.std), tokens)
    return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])


def train_contrastive(
    backbone: Backbone,
    images: np.ndarray,
    indices: np.ndarray,
    texts: Sequence[str],
    cfg: ContrastiveConfig,
    device: torch.device,
    state_path: str | Path | None = None,
    progress: bool = True,
    on_epoch_end=None,
) -> list[dict]:
    """Train ``backbone.model`` in place on (images[indices[i]], texts[i]); returns per-epoch history.

    ``on_epoch_end(epoch, model)`` may return a dict of extra numbers (e.g. a
    validation loss) that is stored in the history and in the resume state.
    """
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    if len(indices) != len(texts):
        raise TrainingError(f"{len(indices)} images but {len(texts)} texts")
    model = backbone.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    batch_size = min(cfg.batch_size, len(indices))
    steps_per_epoch = max(1, len(indices) // batch_size)
    total_steps = steps_per_epoch * cfg.epochs // cfg.grad_accum
    schedule = cosine_lr(optimizer, cfg.lr, min(cfg.warmup_steps, max(total_steps - 1, 0)), max(total_steps, 1))
    loss_fn = ClipLoss()
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=use_amp and not torch.cuda.is_bf16_supported())
    tokens_all = backbone.tokenizer(list(texts))
    indices = np.asarray(indices)

    history: list[dict] = []
    start_epoch = 0
    resume = load_resume_state(state_path)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        history, start_epoch = resume["history"], resume["epoch"] + 1

    step = start_epoch * steps_per_epoch // cfg.grad_accum
    for epoch in range(start_epoch, cfg.epochs):
        # Per-epoch generators make a resumed run draw exactly what an uninterrupted one would.
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        order = torch.randperm(len(indices), generator=gen).numpy()
        model.train()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, mininterval=5)
        for b in bar:
            sel = order[b * batch_size : (b + 1) * batch_size]
            x = resize_crop(to_device_batch(images[np.sort(indices[sel])], device), backbone.image_size)
            # images were fetched in sorted order for memmap locality; match the texts
            tokens = tokens_all[sel[np.argsort(indices[sel], kind="stable")]].to(device)
            if cfg.augment:
                x = augment_batch(x, gen)
            with torch.autocast(device.type, enabled=use_amp, dtype=torch.bfloat16 if not scaler.is_enabled() else torch.float16):
                loss = contrastive_loss_on(backbone, x, tokens, loss_fn) / cfg.grad_accum
            lr = optimizer.param_groups[0]["lr"]
            check_finite(loss, step, lr)
            scaler.scale(loss).backward()
            if (b + 1) % cfg.grad_accum == 0:
                schedule(step)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            losses.append(loss.item() * cfg.grad_accum)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"]}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, model) or {})
        history.append(record)
        if state_path is not None:
            save_torch(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history, "epoch": epoch},
                state_path,
            )
    model.eval()
    return history


@torch.inference_mode()
def contrastive_loss(backbone: Backbone, images, indices, texts, device, batch_size: int = 256) -> float:
    """Mean contrastive loss over fixed batches (no augmentation): the validation criterion."""
    from open_clip.loss import ClipLoss

    loss_fn, total, count = ClipLoss(), 0.0, 0
    tokens_all = backbone.tokenizer(list(texts))
    backbone.model.to(device).eval()
    for start in range(0, len(indices), batch_size):
        sel = np.arange(start, min(start + batch_size, len(indices)))
        if len(sel) < 2:
            break
        x = resize_crop(to_device_batch(images[np.asarray(indices)[sel]], device), backbone.image_size)
        total += contrastive_loss_on(backbone, x, tokens_all[sel].to(device), loss_fn).item() * len(sel)
        count += len(sel)
    return total / max(count, 1)
