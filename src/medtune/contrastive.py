"""CLIP contrastive training of both towers on image-text pairs.

One loop serves the tiny backbone's pretraining and full fine-tuning (seed 001;
FLYP-style): open_clip's ``ClipLoss`` — (image->text CE + text->image CE) / 2 —
with open_clip_train's warm-up + cosine schedule and its clamp of ``logit_scale``
at ln 100 after every optimiser step.

``batch_size`` is the contrastive batch — each pair's negatives are the other pairs
of its batch — and one batch is one optimiser step. ``grad_accum`` only splits a
batch into that many micro-batches to save memory, the way open_clip_train's
``accum_freq`` accumulates (cache every micro-batch's features without gradients,
then recompute each with gradients against the others' cached features), so the
loss and gradients are those of the whole batch whatever ``grad_accum`` is. A
batch never spans epochs, so every batch steps and no gradient crosses an epoch.

The state is saved after every epoch (model, optimiser, GradScaler, step count) so
a killed job resumes where it stopped and ends with the same weights; every random
draw comes from generators seeded by (seed, epoch), so there is no RNG state to save.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from medtune.data.store import read_rows
from medtune.io import save_torch
from medtune.jobs import report
from medtune.models import Backbone
from medtune.preprocess import normalize, resize_crop, to_device_batch
from medtune.training import TrainingError, check_finite, load_resume_state

LOGIT_SCALE_MAX = math.log(100)  # CLIP's cap on the learned temperature, as open_clip_train clamps it


@dataclass(frozen=True)
class ContrastiveConfig:
    epochs: int = 10
    batch_size: int = 128  # the contrastive batch, one optimiser step
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    augment: bool = True
    seed: int = 0
    grad_accum: int = 1  # micro-batches per batch: less memory, same loss and gradients
    amp: bool = True  # used on CUDA only


@dataclass(frozen=True)
class StepPlan:
    """How many pairs per step, micro-batches per step, steps per epoch and in all."""

    batch_size: int
    micro_batches: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, n_pairs: int, cfg: ContrastiveConfig) -> "StepPlan":
        if n_pairs < 2:
            raise TrainingError(f"contrastive training needs at least 2 image-text pairs, got {n_pairs}")
        batch_size = min(cfg.batch_size, n_pairs)
        steps_per_epoch = n_pairs // batch_size  # the last partial batch is dropped, as open_clip does
        total = steps_per_epoch * cfg.epochs
        # a micro-batch of one pair is the smallest there is; more would be empty
        return cls(batch_size, min(cfg.grad_accum, batch_size), steps_per_epoch, total, min(cfg.warmup_steps, total - 1))

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in ("batch_size", "steps_per_epoch", "total_steps", "warmup_steps")}


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: tissue has no canonical orientation."""
    flips = torch.randint(0, 2, (2,), generator=generator).tolist()
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    if flips[0]:
        x = x.flip(-1)
    if flips[1]:
        x = x.flip(-2)
    return torch.rot90(x, turns, dims=(-2, -1))


def text_table(texts: Sequence[str | Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each pair's candidate texts as rows of ids into one list of distinct strings.

    A pair has one text (its caption) or several (its label in every prompt
    template); the distinct strings are tokenised once however many pairs share them.
    Returns (distinct strings, ids padded with -1, candidates per pair).
    """
    options = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    if any(not o for o in options):
        raise TrainingError("a training pair has no candidate text")
    vocab: dict[str, int] = {}
    counts = np.array([len(o) for o in options], dtype=np.int64)
    table = np.full((len(options), int(counts.max(initial=1))), -1, dtype=np.int64)
    for i, option in enumerate(options):
        table[i, : len(option)] = [vocab.setdefault(s, len(vocab)) for s in option]
    return list(vocab), table, counts


TEXT_STREAM, VALIDATION_STREAM = 0, 1


def draw_texts(table: np.ndarray, counts: np.ndarray, seed: int, epoch: int, stream: int = TEXT_STREAM) -> np.ndarray:
    """One candidate per pair, uniformly, from a generator seeded by (stream, seed, epoch) alone.

    Its own generator: the image order and augmentation draw from theirs, so pairs
    with one candidate each (captions) train exactly as they would without it.
    """
    rng = np.random.default_rng([0x7E7, stream, seed, epoch])
    pick = rng.integers(0, counts)
    return table[np.arange(len(table)), pick]


def micro_slices(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous, non-empty, near-equal pieces of range(n)."""
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@contextlib.contextmanager
def buffers_kept(model: torch.nn.Module):
    """Undo buffer updates (batch-norm running statistics) of a forward pass.

    The feature-caching pass must not count a micro-batch in the running
    statistics a second time: its recomputation with gradients counts it.
    """
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)


def clip_forward(backbone: Backbone, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return backbone.model(normalize(images, backbone.mean, backbone.std), tokens)


def contrastive_loss_on(backbone: Backbone, images: torch.Tensor, tokens: torch.Tensor, loss_fn) -> torch.Tensor:
    out = clip_forward(backbone, images, tokens)
    return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])


def accumulate_gradients(
    backbone: Backbone,
    images: torch.Tensor,
    tokens: torch.Tensor,
    micro_batches: int,
    loss_fn,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    on_loss: Callable[[torch.Tensor], None] = lambda loss: None,
) -> torch.Tensor:
    """Add the gradients of the batch's contrastive loss to ``.grad``, in ``micro_batches`` pieces.

    The loss of micro-batch j's pass is the whole batch's loss with only j's
    features live, so its backward gives j's share of the gradient; the shares
    sum to the whole batch's gradient. ``logit_scale`` enters every pass, so it is
    live in the first only (open_clip_train lets it collect k copies). ``on_loss``
    sees each pass's loss before its backward. Returns the batch's loss, detached.
    """
    parts = micro_slices(len(images), micro_batches)
    if len(parts) == 1:
        with autocast():
            loss = contrastive_loss_on(backbone, images, tokens, loss_fn)
        on_loss(loss)
        backward(loss)
        return loss.detach()
    with torch.no_grad(), buffers_kept(backbone.model), autocast():
        cached = [clip_forward(backbone, images[p], tokens[p]) for p in parts]
    image_cache = [c["image_features"] for c in cached]
    text_cache = [c["text_features"] for c in cached]
    first = None
    for j, part in enumerate(parts):
        with autocast():
            out = clip_forward(backbone, images[part], tokens[part])
            scale = out["logit_scale"] if j == 0 else out["logit_scale"].detach()
            image_features = torch.cat(image_cache[:j] + [out["image_features"]] + image_cache[j + 1 :])
            text_features = torch.cat(text_cache[:j] + [out["text_features"]] + text_cache[j + 1 :])
            loss = loss_fn(image_features, text_features, scale)
        on_loss(loss)
        backward(loss)
        first = loss.detach() if first is None else first
    return first


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """0 <= logit_scale <= ln 100 (a temperature of at least 0.01), as in CLIP and open_clip_train."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        with torch.no_grad():
            scale.clamp_(0, LOGIT_SCALE_MAX)


def make_scaler(device: torch.device, use_amp: bool) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast; bfloat16 (where CUDA has it) needs none."""
    fp16 = use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler(device.type, enabled=fp16)


def train_contrastive(
    backbone: Backbone,
    images: np.ndarray,
    indices: np.ndarray,
    texts: Sequence[str | Sequence[str]],
    cfg: ContrastiveConfig,
    device: torch.device,
    state_path: str | Path | None = None,
    progress: bool = True,
    on_epoch_end=None,
) -> list[dict]:
    """Train ``backbone.model`` in place on (images[indices[i]], texts[i]); returns per-epoch history.

    ``texts[i]`` is one string or several candidates (a label in every prompt
    template), one of which is drawn per pair and epoch. ``on_epoch_end(epoch,
    model)`` may return a dict of extra numbers (e.g. a validation loss) that is
    stored in the history and in the resume state.
    """
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    if len(indices) != len(texts):
        raise TrainingError(f"{len(indices)} images but {len(texts)} texts")
    plan = StepPlan.of(len(indices), cfg)
    model = backbone.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    schedule = cosine_lr(optimizer, cfg.lr, plan.warmup_steps, plan.total_steps)
    loss_fn = ClipLoss()
    use_amp = cfg.amp and device.type == "cuda"
    scaler = make_scaler(device, use_amp)
    amp_dtype = torch.float16 if scaler.is_enabled() else torch.bfloat16

    def autocast():
        return torch.autocast(device.type, enabled=use_amp, dtype=amp_dtype)

    vocab, table, counts = text_table(texts)
    vocab_tokens = backbone.tokenizer(vocab)
    indices = np.asarray(indices)

    history: list[dict] = []
    start_epoch, step = 0, 0
    resume = load_resume_state(state_path)
    if resume is not None:
        if resume.get("plan") != plan.as_dict():
            saved = resume.get("plan", "an older medtune's, without one")
            raise TrainingError(
                f"resume state {state_path} was saved for another schedule ({saved}; now {plan.as_dict()}); "
                "delete it to start over"
            )
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scaler.is_enabled() and resume["scaler"]:
            scaler.load_state_dict(resume["scaler"])
        history, start_epoch, step = resume["history"], resume["epoch"] + 1, resume["step"]
        report(f"resumed from the state saved after epoch {start_epoch}")

    lr = optimizer.param_groups[0]["lr"]
    for epoch in range(start_epoch, cfg.epochs):
        # Per-epoch generators make a resumed run draw exactly what an uninterrupted one would.
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        order = torch.randperm(len(indices), generator=gen).numpy()
        text_ids = draw_texts(table, counts, cfg.seed, epoch)
        model.train()
        losses = []
        bar = tqdm(range(plan.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, mininterval=5)
        for b in bar:
            sel = order[b * plan.batch_size : (b + 1) * plan.batch_size]
            x = resize_crop(to_device_batch(read_rows(images, np.sort(indices[sel])), device), backbone.image_size)
            # images were fetched in sorted order for memmap locality; match the texts
            tokens = vocab_tokens[text_ids[sel[np.argsort(indices[sel], kind="stable")]]].to(device)
            if cfg.augment:
                x = augment_batch(x, gen)
            lr = schedule(step)  # the rate this step uses, and the one a NaN message names
            optimizer.zero_grad(set_to_none=True)
            loss = accumulate_gradients(
                backbone, x, tokens, plan.micro_batches, loss_fn,
                backward=lambda l: scaler.scale(l).backward(),
                autocast=autocast,
                on_loss=lambda l: check_finite(l, step, lr),
            )  # fmt: skip
            scaler.step(optimizer)
            scaler.update()
            clamp_logit_scale(model)
            step += 1
            losses.append(loss.item())
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": lr}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, model) or {})
        history.append(record)
        if state_path is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "epoch": epoch,
                "step": step,
                "plan": plan.as_dict(),
            }
            save_torch(state, state_path)
            report(f"epoch {epoch + 1} state saved")
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
        x = resize_crop(to_device_batch(read_rows(images, np.asarray(indices)[sel]), device), backbone.image_size)
        total += contrastive_loss_on(backbone, x, tokens_all[sel].to(device), loss_fn).item() * len(sel)
        count += len(sel)
    return total / max(count, 1)
