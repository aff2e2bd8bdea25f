"""CLIP-LoRA (Zanella & Ben Ayed, CVPR 2024 workshops; ``MaxZanella/CLIP-LoRA``): low-rank
updates of the attention projections of both towers, trained with the class-prompt
cross-entropy.

Every ``nn.MultiheadAttention`` of the image and text transformers (open_clip keeps q, k and v
as one packed ``in_proj_weight``, rows q, then k, then v) gets, on each target projection
``t`` in ``targets`` (q, k, v by default; o, the output projection, optional)::

    t(x) = x W_tᵀ + b_t + s · dropout(x) A_tᵀ B_tᵀ,     A_t: r x d,  B_t: d x r,  s = α / √r

The base weights are never written while training (``requires_grad`` False, read through the
wrapper :class:`LoRAAttention`); A is initialised like ``nn.Linear`` (Kaiming-uniform, a = √5,
seeded) and B at zero, so the untrained model is the pretrained one. Dropout acts on the
branch's input only, in training mode only, with its own mask for each projection, as
upstream's ``LinearLoRA``. After training the update is merged exactly into the packed weights
(``W_t + s·B_t·A_t``, :func:`merge_lora`) and the wrappers are removed: the result is an
ordinary open_clip state dict, saved as the run's ``weights.pt`` and evaluated like full
fine-tuning's (re-encoded test split, prompt-ensembled class text of its own text tower).

The objective is upstream's: per step, the class-prompt text features are recomputed with the
LoRA text tower, and ``exp(logit_scale) · norm(f) · norm(t)ᵀ`` (CLIP's fixed scale, 100 for
OpenAI weights) against the image labels goes into a cross-entropy. Upstream's settings are
the defaults: rank 2, α 1, dropout 0.25 on q, k, v of every layer of both towers; AdamW (lr
2e-4, weight decay 1e-2 on the LoRA matrices, betas 0.9/0.999), a cosine decay per step to
1e-6 (``CosineAnnealingLR``), batch 32 drawn by shuffled passes over the training images (the
last partial batch dropped when there are at least 32, as Dassl's loader does),
``500 · shots`` optimiser steps, a random resized crop (scale 0.08–1, bicubic) and horizontal
flip, and the last step's weights kept (upstream runs no validation). Deviations:

* ``s = α/√r`` is upstream's code (``loralib/layers.py``: ``lora_alpha / math.sqrt(r)``; the
  ``α/r`` of the LoRA paper is commented out there); ``scaling: alpha/r`` gives the paper's.
* The step count: a shot count is not known for a run on a share of the training data, so
  it is ``iterations_per_shot`` (500) times the training images per class, rounded (exactly
  k for a k-shot subset whose classes all have k images), capped at ``max_iterations``
  (8,000, upstream's budget at 16 shots); the tiny default config runs far fewer.
* Prompts: upstream trains and tests with the dataset's first template; here the class text
  is, by default, the ensemble of all the dataset's templates (mean of the normalised
  prompt features, renormalised), the classifier every method is evaluated with
  (``prompts: first`` is upstream's). With one template the two are the same.
* Only the LoRA branches' dropout is in training mode (upstream calls ``clip_model.train()``):
  the backbone's own dropout and batch-norm statistics stay as pretrained. open_clip's CLIP
  ViTs have neither, so this changes nothing there.
* Resumable: the LoRA matrices, optimiser and step are saved every 100 steps outside the
  outputs, and every random draw is seeded by (seed, pass or step), so a killed job resumes
  (``--rerun-incomplete``) and ends with the weights of an uninterrupted run.
* Mixed precision is bfloat16 autocast on CUDA where supported (float16 with loss scaling
  otherwise, upstream's); CPU runs in float32.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medtune.models import Backbone
from medtune.preprocess import normalize, resize_crop, to_device_batch
from medtune.training import TrainingError, check_finite, load_resume_state

SPEC = {
    "training": "backbone",
    "requires": ["text_tower", "open_clip_towers"],
    "label": "CLIP-LoRA",
    "order": 75,
    "defaults": {
        "rank": 2,
        "alpha": 1.0,
        "scaling": "alpha/sqrt(r)",
        "dropout": 0.25,
        "targets": ["q", "k", "v"],
        "encoders": "both",
        "lr": 2e-4,
        "min_lr": 1e-6,
        "weight_decay": 1e-2,
        "batch_size": 32,
        "iterations_per_shot": 500,
        "max_iterations": 8000,
        "augment": True,
        "prompts": "ensemble",
        "amp": True,
    },
    "params": {
        "rank": {"type": "integer", "minimum": 1, "description": "r, the rank of each update B·A"},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "description": "α; the update is scaled by α/√r (or α/r)"},
        "scaling": {
            "enum": ["alpha/sqrt(r)", "alpha/r"],
            "description": "the update's scale: α/√r as CLIP-LoRA's code, or α/r as the LoRA paper",
        },
        "dropout": {"type": "number", "minimum": 0, "maximum": 1, "description": "dropout on the LoRA branch's input, training only"},
        "targets": {
            "type": "array",
            "items": {"enum": ["q", "k", "v", "o"]},
            "minItems": 1,
            "uniqueItems": True,
            "description": "attention projections that get an update (o: the output projection)",
        },
        "encoders": {"enum": ["both", "image", "text"], "description": "the towers whose attention layers are adapted"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "AdamW peak learning rate, cosine per step to min_lr"},
        "min_lr": {"type": "number", "minimum": 0, "description": "the cosine schedule's final learning rate"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "AdamW weight decay"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "training images per step"},
        "iterations_per_shot": {
            "type": "integer",
            "minimum": 1,
            "description": "optimiser steps per training image per class (CLIP-LoRA: 500 x shots)",
        },
        "max_iterations": {"type": "integer", "minimum": 1, "description": "a cap on the optimiser steps (runs on many images per class)"},
        "augment": {"type": "boolean", "description": "random resized crop (scale 0.08-1) and horizontal flip of the training images"},
        "prompts": {
            "enum": ["ensemble", "first"],
            "description": "the class text trained against: every template's prompt ensembled (as evaluated), or the first (upstream)",
        },
        "amp": {"type": "boolean", "description": "mixed precision on CUDA"},
    },
}

PROJECTIONS = ("q", "k", "v")
SAVE_EVERY = 100  # optimiser steps between resume states


class LoRAAttention(nn.Module):
    """An ``nn.MultiheadAttention`` (``base``, left untouched) with low-rank updates of its
    projections. Called as open_clip calls attention (``need_weights=False``).

    ``lora_A[t]`` is r x d, ``lora_B[t]`` d x r for each target ``t``; the update of ``t`` is
    ``scale · B_t A_t``, applied to ``dropout(x)`` (training mode only)."""

    def __init__(
        self,
        base: nn.MultiheadAttention,
        rank: int,
        scale: float,
        dropout: float = 0.0,
        targets: Iterable[str] = PROJECTIONS,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise TrainingError("LoRA needs attention with one packed q/k/v projection, without bias_k/bias_v or add_zero_attn")
        self.base = base
        self.scale = float(scale)
        self.targets = tuple(targets)
        self.lora_dropout = nn.Dropout(dropout)
        weight = base.in_proj_weight
        d = base.embed_dim
        self.lora_A = nn.ParameterDict({t: nn.Parameter(weight.new_empty(rank, d)) for t in self.targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(weight.new_zeros(d, rank)) for t in self.targets})
        for a in self.lora_A.values():
            with torch.no_grad():  # nn.Linear's initialisation, on CPU for the same draw on any device
                a.copy_(nn.init.kaiming_uniform_(torch.empty(a.shape, dtype=torch.float64), a=math.sqrt(5), generator=generator))

    @property
    def batch_first(self) -> bool:
        return self.base.batch_first

    def delta(self, target: str) -> torch.Tensor:
        """``scale · B A`` of one target, d x d."""
        return self.scale * (self.lora_B[target] @ self.lora_A[target])

    def _update(self, x: torch.Tensor, target: str, out: torch.Tensor) -> torch.Tensor:
        """``out`` plus the target's update of ``x`` (none for a target without one)."""
        if target not in self.lora_A:
            return out
        return out + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_A[target]), self.lora_B[target])

    def project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k and v (each N x L x d), with the updates."""
        base, d = self.base, self.base.embed_dim
        w, b = base.in_proj_weight, base.in_proj_bias
        if query is key and key is value:  # self-attention (open_clip's): one packed product, as nn.MultiheadAttention
            plain = F.linear(query, w, b).chunk(3, dim=-1)
        else:
            plain = [F.linear(x, w[i * d : (i + 1) * d], None if b is None else b[i * d : (i + 1) * d])
                     for i, x in enumerate((query, key, value))]
        return tuple(self._update(x, t, out) for t, x, out in zip(PROJECTIONS, (query, key, value), plain))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise TrainingError("LoRAAttention computes no attention weights; call it with need_weights=False (open_clip does)")
        if query.dim() != 3:
            raise TrainingError(f"LoRAAttention takes batched (3-d) inputs, not {query.dim()}-d")
        base = self.base
        if not base.batch_first:  # L x N x d -> N x L x d
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        n, length, d = query.shape
        heads, source = base.num_heads, key.shape[1]
        q, k, v = (x.reshape(n, -1, heads, d // heads).transpose(1, 2) for x in self.project(query, key, value))
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # (N·heads) x L x S, as nn.MultiheadAttention takes it
            mask = mask.view(n, heads, length, source)
        padding = _additive(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        causal = is_causal and mask is None
        dropout = base.dropout if base.training else 0.0  # the attention's own dropout, as nn.MultiheadAttention's
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        x = x.transpose(1, 2).reshape(n, length, d)
        out = self._update(x, "o", F.linear(x, base.out_proj.weight, base.out_proj.bias))
        return (out if base.batch_first else out.transpose(0, 1)), None


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask (bool: True = not attended; float: added) as a float mask to add."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def scale_of(rank: int, alpha: float, scaling: str = "alpha/sqrt(r)") -> float:
    if scaling == "alpha/sqrt(r)":
        return alpha / math.sqrt(rank)
    if scaling == "alpha/r":
        return alpha / rank
    raise ValueError(f"unknown LoRA scaling {scaling!r}; expected 'alpha/sqrt(r)' or 'alpha/r'")


def tower_of(name: str) -> str:
    """open_clip keeps the image tower under ``visual``; every other module is the text tower's."""
    return "image" if name == "visual" or name.startswith("visual.") else "text"


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Iterable[str] = PROJECTIONS,
    encoders: str = "both",
    scaling: str = "alpha/sqrt(r)",
    generator: torch.Generator | None = None,
) -> list[LoRAAttention]:
    """Freeze ``model`` and wrap every packed ``nn.MultiheadAttention`` of the chosen towers
    in a :class:`LoRAAttention`, in place; returns the wrappers (their LoRA matrices are the
    only trainable parameters). :func:`merge_lora` undoes the wrapping."""
    towers = ("image", "text") if encoders == "both" else (encoders,)
    model._lora_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and tower_of(name) in towers
    ]
    for tower in towers:
        if not any(tower_of(name) == tower for name, _ in found):
            raise TrainingError(
                f"CLIP-LoRA adapts attention layers, and this backbone's {tower} tower has no nn.MultiheadAttention "
                f"(a ResNet image tower, or open_clip's custom attention); set encoders to the other tower"
            )
    wrappers = []
    scale = scale_of(rank, alpha, scaling)
    for name, module in found:
        wrapper = LoRAAttention(module, rank, scale, dropout, targets, generator).train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, wrapper)
        wrappers.append(wrapper)
    return wrappers


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Add every update into its base weights (``W_t + s·B_t·A_t`` on the rows of the packed
    ``in_proj_weight``, or on ``out_proj``), put the base modules back in place of the
    wrappers and restore the parameters' ``requires_grad``; returns the layers merged."""
    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRAAttention):
            continue
        base, d = module.base, module.base.embed_dim
        for i, t in enumerate(PROJECTIONS):
            if t in module.lora_A:
                base.in_proj_weight[i * d : (i + 1) * d] += module.delta(t).to(base.in_proj_weight.dtype)
        if "o" in module.lora_A:
            base.out_proj.weight += module.delta("o").to(base.out_proj.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, base)
        merged += 1
    for n, p in model.named_parameters():
        p.requires_grad_(getattr(model, "_lora_requires_grad", {}).get(n, p.requires_grad))
    if hasattr(model, "_lora_requires_grad"):
        del model._lora_requires_grad
    return merged


# ---- training -----------------------------------------------------------------------------


def iterations(n_train: int, n_classes: int, params: dict[str, Any]) -> int:
    """``iterations_per_shot`` x training images per class (rounded, at least 1), capped."""
    per_class = max(1, round(n_train / max(n_classes, 1)))
    return int(min(params["iterations_per_shot"] * per_class, params.get("max_iterations") or math.inf))


def cosine(step: int, total: int, lr: float, min_lr: float) -> float:
    """``CosineAnnealingLR(T_max=total, eta_min=min_lr)``'s rate at ``step`` (closed form)."""
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * step / total)) / 2


def random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale, ratio, bicubic)`` then ``RandomHorizontalFlip``,
    per image of a float N x 3 x H x W batch in [0, 1], drawing from ``generator``."""
    from torchvision.transforms.v2 import functional as TF

    height, width = x.shape[-2:]
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    uniform = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=generator, dtype=torch.float64))
    out = []
    for image in x:
        for _ in range(10):
            target = area * uniform(*scale)
            aspect = math.exp(uniform(float(log_ratio[0]), float(log_ratio[1])))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                break
        else:  # torchvision's fallback: the central crop at the nearest allowed ratio
            in_ratio = width / height
            w, h = (width, round(width / min(ratio))) if in_ratio < min(ratio) else (
                (round(height * max(ratio)), height) if in_ratio > max(ratio) else (width, height))
            top, left = (height - h) // 2, (width - w) // 2
        crop = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        if bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).clamp_(0, 1)


def class_text(backbone: Backbone, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """C x D class features from C·T prompts (class-major): each class's normalised prompt
    features averaged and renormalised (one template: just its normalised feature)."""
    feats = F.normalize(backbone.model.encode_text(tokens).float(), dim=-1)
    return F.normalize(feats.view(n_classes, -1, feats.shape[-1]).mean(dim=1), dim=-1)


def class_names(*frames: pd.DataFrame) -> list[str]:
    """Every class's name in label order (labels 0 .. C-1)."""
    pairs = pd.concat(frames)[["label", "label_name"]].drop_duplicates().sort_values("label")
    if pairs["label"].tolist() != list(range(len(pairs))) or pairs["label"].duplicated().any():
        raise TrainingError("CLIP-LoRA needs labels 0 .. C-1, each with one name, among the training and validation images")
    return pairs["label_name"].tolist()


def train_lora(
    backbone: Backbone,
    images: np.ndarray,
    train_rows: pd.DataFrame,
    prompts: list[list[str]],
    params: dict[str, Any],
    seed: int,
    device: torch.device,
    state_path: str | Path | None = None,
    progress: bool = True,
    on_step=None,
) -> dict[str, Any]:
    """Train LoRA updates of ``backbone.model`` (wrapped in place by :func:`add_lora`; merge
    them with :func:`merge_lora`) on the class-prompt cross-entropy; ``prompts[c]`` are class
    c's prompts. Returns what happened. Resumable: with ``state_path`` the LoRA matrices,
    optimiser, loss scaler and step are saved every :data:`SAVE_EVERY` steps, and every
    random draw (order, crops, dropout masks) is seeded by (seed, pass or step), so a resumed
    run ends where an uninterrupted one would. ``on_step(step)`` is called after each step."""
    from medtune.contrastive import make_scaler

    params = {**SPEC["defaults"], **params}
    model = backbone.model.to(device)
    generator = torch.Generator().manual_seed(seed)
    wrappers = add_lora(
        model, params["rank"], params["alpha"], params["dropout"], params["targets"], params["encoders"], params["scaling"], generator
    )
    trainable = lora_parameters(model)
    n_classes = len(prompts)
    templates = {len(p) for p in prompts}
    if len(templates) != 1:
        raise TrainingError("every class needs the same number of prompts")
    tokens = backbone.tokenizer([p for per_class in prompts for p in per_class]).to(device)
    indices, labels = train_rows["index"].to_numpy(), train_rows["label"].to_numpy()
    n = len(indices)
    batch = min(params["batch_size"], n)
    steps_per_pass = n // batch  # the last partial batch dropped (n >= batch_size), or one batch of all
    total = iterations(n, n_classes, params)
    plan = {"batch_size": batch, "steps_per_pass": steps_per_pass, "total_steps": total}

    optimizer = torch.optim.AdamW(list(trainable.values()), lr=params["lr"], weight_decay=params["weight_decay"], betas=(0.9, 0.999))
    use_amp = params.get("amp", True) and device.type == "cuda"
    scaler = make_scaler(device, use_amp)
    amp_dtype = torch.float16 if scaler.is_enabled() else torch.bfloat16
    scale = backbone.logit_scale  # CLIP's own, fixed (upstream: 100 for OpenAI CLIP)

    step, history = 0, []
    resume = load_resume_state(state_path)
    if resume is not None:
        if resume.get("plan") != plan:
            raise TrainingError(f"resume state {state_path} was saved for another schedule ({resume.get('plan')}; now {plan}); delete it to start over")
        with torch.no_grad():
            for name, value in resume["lora"].items():
                trainable[name].copy_(value)
        optimizer.load_state_dict(resume["optimizer"])
        if scaler.is_enabled() and resume["scaler"]:
            scaler.load_state_dict(resume["scaler"])
        step, history = resume["step"], resume["history"]

    model.eval()  # the backbone as pretrained: only the LoRA branches' dropout is in training mode
    for wrapper in wrappers:
        wrapper.lora_dropout.train()
    log_every = max(1, total // 20)
    losses, correct, seen = [], 0, 0
    bar = tqdm(total=total, initial=step, desc="CLIP-LoRA", disable=not progress, mininterval=5)
    order, order_pass = None, -1
    while step < total:
        this_pass, b = divmod(step, steps_per_pass)
        if this_pass != order_pass:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + this_pass)).numpy()
            order_pass = this_pass
        sel = order[b * batch : (b + 1) * batch]
        sel = sel[np.argsort(indices[sel], kind="stable")]  # images in store order: memory-map locality
        step_gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        torch.manual_seed(seed * 1_000_003 + step)  # the dropout masks of this step
        x = to_device_batch(images[indices[sel]], device)
        if params.get("augment", True):
            x = random_resized_crop(x.float() / 255, backbone.image_size, step_gen)
        else:
            x = resize_crop(x, backbone.image_size)
        y = torch.as_tensor(labels[sel], device=device)
        lr = cosine(step, total, params["lr"], params["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, enabled=use_amp, dtype=amp_dtype):
            text = class_text(backbone, tokens, n_classes)
            image = F.normalize(model.encode_image(normalize(x, backbone.mean, backbone.std)).float(), dim=-1)
            logits = scale * image @ text.T
        loss = F.cross_entropy(logits.float(), y)
        check_finite(loss, step, lr)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        bar.update(1)
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if step % log_every == 0 or step == total:
            history.append({"step": step, "train_loss": float(np.mean(losses)), "train_accuracy": correct / seen, "lr": lr})
            losses, correct, seen = [], 0, 0
        if state_path is not None and step % SAVE_EVERY == 0 and step < total:
            from medtune.io import save_torch

            lora = {k: v.detach().cpu().clone() for k, v in trainable.items()}
            save_torch({"lora": lora, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                        "history": history, "plan": plan}, state_path)
        if on_step is not None:
            on_step(step)
    bar.close()
    return {
        "iterations": total,
        **plan,
        "images_seen": total * batch,
        "trainable_parameters": int(sum(p.numel() for p in trainable.values())),
        "lora_layers": {t: sum(tower_of(n) == t for n, m in model.named_modules() if isinstance(m, LoRAAttention)) for t in ("image", "text")},
        "scale": wrappers[0].scale,
        "history": history,
    }


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def tune(backbone: Backbone, images, train_rows, val_rows, params, prompts, seed, device, state_dir=None, progress=True):
    """The backbone-training entry point (see :mod:`medtune.adapt`): ``(pretrained, merged, info)``;
    ``backbone.model`` is left as the merged model, an ordinary open_clip model."""
    from medtune.encode import class_prompts

    templates = prompts["templates"] if params.get("prompts", "ensemble") == "ensemble" else prompts["templates"][:1]
    per_class = class_prompts(class_names(train_rows, val_rows), templates, prompts.get("classnames"))
    pretrained = cpu_state(backbone.model)
    state_path = Path(state_dir) / "resume_state.pt" if state_dir else None
    info = train_lora(backbone, images, train_rows, per_class, params, seed, torch.device(device), state_path, progress)
    info["merged_layers"] = merge_lora(backbone.model)
    backbone.model.eval()
    return pretrained, cpu_state(backbone.model), info


def mixes(pretrained: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], params: dict[str, Any]):
    """The merged model alone (no WiSE-FT mixes)."""
    yield "", kept
