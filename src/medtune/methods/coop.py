"""CoOp: context optimisation for prompt learning (Zhou et al., 2022; KaiyangZhou/CoOp).

Both CLIP towers stay frozen. The only trainable parameters are ``n_ctx``
context vectors ``v_1 .. v_n`` (token-embedding width), shared across classes,
that replace the words of a hand-written prompt; the class name goes at the end::

    prompt_c = [SOS] v_1 ... v_n  <tokens of "{class name}.">  [EOS] [pad ...]
    t_c      = normalize(text_encoder(prompt_c))
    logits   = exp(logit_scale) * normalize(f) @ t.T

The prompts are built by tokenising ``"X X ... X {class name}."`` and embedding
the tokens with the frozen ``token_embedding``: position 0 (SOS) is the *prefix*,
positions ``1 .. n_ctx`` (the X's) are replaced by the context, and the rest (the
class-name tokens, ".", EOS and padding) is the *suffix*. :func:`encode_prompts`
then runs the rest of open_clip's ``CLIP.encode_text`` on these embeddings
(positional embedding, causal transformer, ``ln_final``, EOS pooling found from
the tokenised prompts, ``text_projection``), so gradients flow through the
frozen text encoder into the context only.

Image features never change (the image tower is frozen), so CoOp trains on the
encode-once cache of L2-normalised image features, like every other method.

Context initialisation: random ``N(0, 0.02^2)`` (seeded), or the token
embeddings of a phrase (``ctx_init: "a photo of a"``), in which case ``n_ctx`` is
the phrase's number of BPE tokens and all of them are learnt; the untrained
model then equals zero-shot CLIP with the prompt ``"{ctx_init} {class name}."``.
(Upstream counts *words*: for "a photo of a" that is the same, but for a phrase
with multi-token words, e.g. "a histopathology image of" = 7 tokens, upstream
would learn only the first 5 tokens and freeze the rest into the suffix.)

Training follows the CoOp configs (``configs/trainers/CoOp/*.yaml``): SGD, lr
0.002, momentum 0.9, weight decay 5e-4, batch 32, a cosine schedule over the
epochs after one warm-up epoch at a constant lr 1e-5 (Dassl's
``ConstantWarmupScheduler`` wrapping ``CosineAnnealingLR(T_max=epochs)``: epoch
``e >= warmup`` runs at ``lr * (1 + cos(pi * (e - warmup) / epochs)) / 2``), the last
incomplete batch dropped (Dassl's ``drop_last`` when there are at least
``batch_size`` samples). The paper trains 50 epochs for 1 shot, 100 for 2-4 shots
and 200 for 8-16 shots; here ``epochs`` is a plain integer parameter (default 50).
Upstream keeps the last epoch; here the epoch whose context has the best
validation accuracy (ties: lower validation loss, then the earlier epoch) is kept.

The saved head holds the final class text features, so evaluation needs no text
encoder: it is the zero-shot :class:`~medtune.methods.zeroshot.TextClassifier`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtune.methods.zeroshot import TextClassifier
from medtune.training import check_finite, history_record, seed_everything

SPEC = {
    "training": "frozen",
    "requires": ["text_tower", "open_clip_towers"],
    "needs_text_encoder": True,  # back-propagates into the context through the frozen text tower
    "label": "CLIP + CoOp",
    "order": 50,
    "defaults": {
        "n_ctx": 16,
        "ctx_init": None,  # e.g. "a photo of a"; then n_ctx = its number of tokens
        "ctx_std": 0.02,
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "epochs": 50,  # CoOp paper: 50 (1 shot), 100 (2-4 shots), 200 (8-16 shots)
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "batch_size": 32,
    },
    "params": {
        "n_ctx": {"type": "integer", "minimum": 1, "maximum": 64, "description": "learnable context tokens before the class name (ignored when ctx_init gives a phrase)"},
        "ctx_std": {"type": "number", "exclusiveMinimum": 0, "description": "standard deviation of the random initial context vectors"},
        "ctx_init": {"type": ["string", "null"], "description": "phrase whose token embeddings initialise the context, e.g. 'a photo of a'"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 10, "description": "SGD learning rate after the warm-up, cosine-decayed"},
        "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "SGD momentum"},
        "weight_decay": {"type": "number", "minimum": 0, "description": "SGD weight decay"},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "passes over the training subset; the best validation epoch is kept (CoOp: 50 at 1 shot, 200 at 8-16)"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "training features per step"},
        "warmup_epochs": {"type": "integer", "minimum": 0, "description": "epochs at the constant warmup_lr before the cosine schedule"},
        "warmup_lr": {"type": "number", "minimum": 0, "description": "learning rate during the warm-up"},
    },
}

PLACEHOLDER = "X"
_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


class CoOpError(ValueError):
    """CoOp cannot run on this backbone or these inputs; the message says why."""


def check_supported(model: nn.Module) -> None:
    """CoOp needs open_clip's ``CLIP`` with its own text transformer (not an HF text tower)."""
    missing = [name for name in _TEXT_PARTS if not hasattr(model, name)]
    if missing:
        raise CoOpError(
            f"CoOp needs an open_clip CLIP with a built-in text transformer; {type(model).__name__} has no "
            f"{', '.join(missing)} (towers such as BiomedCLIP's Hugging Face text encoder are not supported)"
        )


@contextmanager
def frozen(model: nn.Module):
    """Both towers frozen (no parameter requires grad, eval mode) inside the block; restored after."""
    flags = [param.requires_grad for param in model.parameters()]
    was_training = model.training
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for param, flag in zip(model.parameters(), flags):
            param.requires_grad_(flag)
        model.train(was_training)


def _context_length(model: nn.Module) -> int:
    return int(model.positional_embedding.shape[0])


def _eos_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Where ``text_global_pool`` reads each prompt's feature from."""
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    raise CoOpError(f"CoOp needs EOS pooling of the text tower (text_pool_type 'argmax' or 'eos'), not {pool!r}")


def _tokenize(model: nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """Tokens at the model's context length; refuses prompts that would be truncated."""
    length = _context_length(model)
    long = tokenizer(texts, context_length=length + 128)
    ends = _eos_positions(model, long)
    too_long = [t for t, end in zip(texts, ends.tolist()) if end >= length]
    if too_long:
        raise CoOpError(
            f"CoOp prompt {too_long[0]!r} has more tokens than the text context length {length}; "
            "use fewer context tokens (n_ctx) or a shorter class name"
        )
    return tokenizer(texts, context_length=length)


def phrase_length(model: nn.Module, tokenizer, phrase: str) -> int:
    """Number of BPE tokens of ``phrase`` (without SOS and EOS)."""
    return int(_eos_positions(model, tokenizer([phrase], context_length=_context_length(model) + 128))[0]) - 1


def encode_prompts(
    model: nn.Module,
    ctx: torch.Tensor,
    prefix: torch.Tensor,
    suffix: torch.Tensor,
    tokens: torch.Tensor,
) -> torch.Tensor:
    """C x D L2-normalised text features of the prompts ``[prefix, ctx, suffix]``.

    ``ctx`` is ``n_ctx x W`` (shared) or ``C x n_ctx x W`` (class-specific), ``prefix``
    ``C x 1 x W`` and ``suffix`` ``C x (L - 1 - n_ctx) x W`` token embeddings, ``tokens``
    the ``C x L`` tokenised prompts (only used to find each prompt's EOS). This is
    open_clip's ``CLIP.encode_text`` from embeddings instead of token ids.
    """
    from open_clip.transformer import text_global_pool

    cast_dtype = model.transformer.get_cast_dtype()
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(prefix.shape[0], -1, -1)
    x = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1).to(cast_dtype)
    x = x + model.positional_embedding.to(cast_dtype)
    mask = model.attn_mask
    if mask is not None:
        # Under the causal mask no position sees the padding after the last EOS, so the
        # transformer runs on the prompts' length, not the context length (77 for CLIP):
        # the same features for a fraction of the cost of every CoOp step.
        keep = int(_eos_positions(model, tokens).max()) + 1
        x, mask, tokens = x[:, :keep], mask[:keep, :keep], tokens[:, :keep]
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x.float(), dim=-1)


class PromptLearner(nn.Module):
    """The learnable context and the frozen prefix/suffix embeddings of every class prompt.

    The CLIP model is not a submodule (its parameters must not be trained or saved
    with the prompts): pass it to :meth:`forward`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        class_names: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        ctx_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_supported(model)
        device = model.positional_embedding.device
        width = model.token_embedding.weight.shape[1]
        names = [name.replace("_", " ") for name in class_names]
        with torch.no_grad():
            if ctx_init:
                ctx_init = " ".join(ctx_init.replace("_", " ").split())
                n_ctx = phrase_length(model, tokenizer, ctx_init)
                init_tokens = _tokenize(model, tokenizer, [ctx_init]).to(device)
                ctx = model.token_embedding(init_tokens)[0, 1 : 1 + n_ctx].float().cpu()
                prompt_prefix = ctx_init
            else:
                if int(n_ctx) < 1:
                    raise CoOpError(f"CoOp needs n_ctx >= 1 context tokens, not {n_ctx}")
                n_ctx = int(n_ctx)
                ctx = torch.empty(n_ctx, width).normal_(0.0, ctx_std, generator=generator)
                prompt_prefix = " ".join([PLACEHOLDER] * n_ctx)
            self.prompts = [f"{prompt_prefix} {name}." for name in names]
            tokens = _tokenize(model, tokenizer, self.prompts).to(device)
            embedding = model.token_embedding(tokens).float()
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init or None
        self.class_names = list(class_names)
        self.ctx = nn.Parameter(ctx.to(device))
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone(), persistent=False)

    def forward(self, model: nn.Module) -> torch.Tensor:
        return encode_prompts(model, self.ctx, self.token_prefix, self.token_suffix, self.tokens)


def lr_at(epoch: int, p: dict[str, Any]) -> float:
    """Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max=epochs), per epoch."""
    warmup = int(p["warmup_epochs"])
    if epoch < warmup:
        return float(p["warmup_lr"])
    return float(p["lr"]) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / int(p["epochs"])))


def class_logits(features: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """CoOp's logits: ``scale`` x cosine similarity of image ``features`` (normalised here) to the
    class prompts' normalised ``text`` features (C x D). Public so that a reference implementation
    (``medtune.bench.public_code``) scores exactly as :func:`fit_coop` does."""
    return scale * F.normalize(features, dim=-1) @ text.T


def fit_coop(backbone, class_names: Sequence[str], data, params: dict[str, Any], seed: int) -> tuple[dict, dict]:
    """Learn CoOp's context on ``data`` (cached image features) with ``backbone``'s frozen text encoder.

    ``class_names`` are the words put in the prompts, in label order (``_`` reads as
    a space, as upstream). Returns ``(head_state, info)`` like every method's ``fit``.
    """
    p = {**SPEC["defaults"], **(params or {})}
    model = backbone.model
    check_supported(model)
    n_classes = len(class_names)
    if data.class_text is not None and len(data.class_text) and np.asarray(data.class_text).shape[0] != n_classes:
        raise CoOpError(f"{n_classes} class names given but the class text has {np.asarray(data.class_text).shape[0]} rows")
    labels = np.asarray(data.train_labels, dtype=np.int64)
    if len(labels) == 0:
        raise CoOpError("CoOp needs at least one training sample")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise CoOpError(f"training labels must lie in 0..{n_classes - 1}, found {labels.min()}..{labels.max()}")

    gen = seed_everything(seed)
    device = model.positional_embedding.device
    scale = float(backbone.logit_scale)
    with frozen(model):
        learner = PromptLearner(model, backbone.tokenizer, class_names, p["n_ctx"], p["ctx_init"], p["ctx_std"], gen)
        x = torch.tensor(np.asarray(data.train_features), dtype=torch.float32).to(device)
        y = torch.from_numpy(labels).to(device)
        val_x = torch.tensor(np.asarray(data.val_features), dtype=torch.float32).to(device)
        val_y = torch.tensor(np.asarray(data.val_labels), dtype=torch.int64).to(device)

        def validate(text: torch.Tensor) -> tuple[float | None, float | None]:
            if len(val_y) == 0:
                return None, None
            with torch.no_grad():
                logits = class_logits(val_x, text, scale)
                return float((logits.argmax(1) == val_y).float().mean()), float(F.cross_entropy(logits, val_y))

        # The prompts' features after an epoch serve its validation and, unchanged since no
        # step came between, the next epoch's first step: one text-encoder pass per epoch saved.
        text = learner(model)
        init_acc, _ = validate(text.detach())
        optimizer = torch.optim.SGD(
            [learner.ctx], lr=lr_at(0, p), momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"])
        )
        batch = int(p["batch_size"])
        drop_last = len(x) >= batch
        history: dict[str, list] = {"train_loss": [], "train_accuracy": [], "val_accuracy": [], "val_loss": [], "lr": []}
        best: tuple | None = None  # (key, epoch, ctx, class text)
        step = 0
        epochs = int(p["epochs"])
        for epoch in range(epochs):
            lr = lr_at(epoch, p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = torch.randperm(len(x), generator=gen).to(device)
            stop = len(x) - len(x) % batch if drop_last else len(x)
            losses, correct = [], 0
            for start in range(0, stop, batch):
                sel = order[start : start + batch]
                logits = class_logits(x[sel], text if text is not None else learner(model), scale)
                text = None
                loss = F.cross_entropy(logits, y[sel])
                check_finite(loss, step, lr)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                correct += int((logits.argmax(1) == y[sel]).sum())
                step += 1
            with torch.set_grad_enabled(epoch < epochs - 1):
                text = learner(model)
            val_acc, val_loss = validate(text.detach())
            history["train_loss"].append(float(np.mean(losses)))
            history["train_accuracy"].append(correct / stop)
            history["val_accuracy"].append(val_acc)
            history["val_loss"].append(val_loss)
            history["lr"].append(lr)
            # best validation accuracy, then lower validation loss, then the earlier epoch;
            # without a validation split, the last epoch
            key = (val_acc, -val_loss) if val_acc is not None else (epoch,)
            if best is None or key > best[0]:
                best = (key, epoch, learner.ctx.detach().clone(), text.detach())
        if best is None:  # epochs == 0: the initial context
            best = (None, -1, learner.ctx.detach().clone(), text.detach())
        _, best_epoch, best_ctx, class_text = best

    state = {
        "class_text": class_text.detach().float().cpu(),
        "logit_scale": scale,
        "ctx": best_ctx.float().cpu(),
        "ctx_init": learner.ctx_init,
        "class_names": [str(c) for c in class_names],
    }
    info = {
        "n_ctx": learner.n_ctx,
        "ctx_init": learner.ctx_init,
        "trainable_parameters": int(best_ctx.numel()),
        "best_epoch": best_epoch + 1,  # 1-based; 0 = untrained
        "val_accuracy": history["val_accuracy"][best_epoch] if best_epoch >= 0 else init_acc,
        "val_accuracy_init": init_acc,
        **history_record(history, step),
        "train_accuracy_by_epoch": history["train_accuracy"],
        "val_loss_by_epoch": history["val_loss"],
        "lr_by_epoch": history["lr"],
    }
    return state, info


def fit(data, params, seed):
    if data.backbone is None:
        raise CoOpError("CoOp trains prompts through the backbone's text encoder: FitData.backbone is not set")
    return fit_coop(data.backbone, data.class_names, data, params, seed)


def build_head(s: dict) -> nn.Module:
    return TextClassifier(s["class_text"], s["logit_scale"])
