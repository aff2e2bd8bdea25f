"""The reference paths of figure 1: each method as the public code runs it, without a feature cache.

Every training step re-encodes its batch of training images through the image encoder
(:class:`NaiveEncoder`), in one of two styles: ``"reencode"`` (the pipeline's batched tensor
preprocessing, no gradient: re-encoding alone) or ``"public"`` (the CLIPath public code,
ucdrubinet/CLIP_RFC: a PIL transform per image and autograd through the unfrozen encoder; for RFC
the class prompts re-encoded every step too, :class:`PublicText`; for CoOp its upstream text encoder,
:func:`upstream_prompt_features`). Otherwise each function follows its method's own fit in
``medtune.methods`` step for step, so a cached and a re-encoded run train the same model.
"""

from __future__ import annotations

import numpy as np


class NaiveEncoder:
    """Training images' features computed on demand, as a training loop without a feature cache does.

    ``style="reencode"``: the pipeline's batched tensor preprocessing from the uint8 store and
    no gradient through the encoder, so the only difference from the cached path is the
    re-encoding itself. ``style="public"``: what the CLIPath public code (ucdrubinet/CLIP_RFC)
    does every step: a PIL image and the model's PIL transform per image (its DataLoader, no
    workers), then ``encode_image`` with autograd on (the backbone was never frozen there, so
    ``backward`` runs through the image encoder too, although only the head is stepped).
    Features come back on the CPU, where the cached heads train.
    """

    def __init__(self, backbone, images: np.ndarray, device, style: str = "reencode", grad: bool = False) -> None:
        import torch

        if style not in ("reencode", "public"):
            raise ValueError(f"unknown naive style {style!r}")
        self.backbone, self.images, self.device = backbone, images, torch.device(device)
        self.style, self.grad = style, grad and style == "public"
        self.images_encoded = 0
        if style == "public":
            import open_clip

            self.transform = open_clip.image_transform(backbone.image_size, is_train=False, mean=backbone.mean, std=backbone.std)

    def _pixels(self, indices: np.ndarray):
        import torch

        from medtune.preprocess import normalize, resize_crop, to_device_batch

        if self.style == "public":
            from PIL import Image

            return torch.stack([self.transform(Image.fromarray(self.images[i])) for i in indices]).to(self.device)
        bb = self.backbone
        return normalize(resize_crop(to_device_batch(self.images[indices], self.device), bb.image_size), bb.mean, bb.std)

    def __call__(self, indices: np.ndarray):
        import torch
        import torch.nn.functional as F

        indices = np.asarray(indices)
        self.images_encoded += len(indices)
        # no_grad, not inference_mode: the features feed a head that is trained
        with torch.set_grad_enabled(self.grad), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            feats = self.backbone.model.encode_image(self._pixels(indices))
        return F.normalize(feats.float(), dim=-1).cpu()

    def many(self, indices: np.ndarray, batch_size: int):
        import torch

        with torch.no_grad():
            return torch.cat([self(indices[s : s + batch_size]) for s in range(0, len(indices), batch_size)]).detach()


class PublicText:
    """The public code's class-prompt features, re-encoded (with autograd) at every step."""

    def __init__(self, backbone, class_names, templates, device) -> None:
        from medtune.encode import class_prompts

        prompts = class_prompts(class_names, templates)
        self.backbone, self.n = backbone, len(prompts)
        self.tokens = backbone.tokenizer([p for per in prompts for p in per]).to(device)

    def __call__(self):
        import torch.nn.functional as F

        feats = F.normalize(self.backbone.model.encode_text(self.tokens).float(), dim=-1)
        return F.normalize(feats.view(self.n, -1, feats.shape[-1]).mean(1), dim=-1).cpu()


def naive_rfc(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, class_text, scale, params, seed, batch_size,
              text: PublicText | None = None):
    """:func:`medtune.methods.rfc.fit`, encoding each training batch every epoch (and, public-code style, the prompts too)."""
    import torch
    import torch.nn.functional as F

    from medtune.heads import accuracy
    from medtune.methods.rfc import ResidualFeatureConnection, RFCHead
    from medtune.training import seed_everything

    val_f = enc.many(val_idx, batch_size).numpy()  # once per run
    y = torch.tensor(np.asarray(train_labels), dtype=torch.int64)
    model = enc.backbone.model
    val_acc = {}
    for alpha in params["alphas"]:
        gen = seed_everything(seed)
        head = RFCHead(ResidualFeatureConnection(class_text.shape[1], params["hidden_widths"], alpha, params["final_relu"]),
                       torch.as_tensor(class_text).float(), scale)
        optimizer = torch.optim.Adam(head.rfc.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        for _ in range(params["epochs"]):
            order = torch.randperm(len(train_idx), generator=gen)
            for start in range(0, len(train_idx), params["batch_size"]):
                sel = order[start : start + params["batch_size"]]
                feats = enc(train_idx[sel.numpy()])
                logits = head(feats) if text is None else head.logit_scale * head.embed(feats) @ text().T
                loss = F.cross_entropy(logits, y[sel])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if text is not None or enc.grad:
                    model.zero_grad(set_to_none=True)  # gradients reached the backbone; only the head steps
        val_acc[alpha] = accuracy(head.eval(), val_f, val_labels)
    return max(val_acc.values())


def naive_linear_probe(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, class_text, scale, params, seed, batch_size):
    """The linear probe with its run's images encoded in the run (L-BFGS has no epochs to re-encode in)."""
    from medtune.heads import FitData
    from medtune.methods import linear_probe

    data = FitData(enc.many(train_idx, batch_size).numpy(), np.asarray(train_labels), enc.many(val_idx, batch_size).numpy(),
                   np.asarray(val_labels), class_text, scale)
    _, info = linear_probe.fit(data, params, seed)
    return max(info["val_accuracy_by_C"].values(), default=None)


def upstream_prompt_features(model, learner):
    """CoOp's own ``TextEncoder`` (KaiyangZhou/CoOp, ``trainers/coop.py``): the whole context length through
    the text transformer, where :func:`medtune.methods.coop.encode_prompts` stops at the prompts' last EOS."""
    import torch
    import torch.nn.functional as F

    ctx = learner.ctx.unsqueeze(0).expand(len(learner.tokens), -1, -1)
    x = torch.cat([learner.token_prefix, ctx, learner.token_suffix], dim=1) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    x = x[torch.arange(x.shape[0]), learner.tokens.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def naive_coop(enc: NaiveEncoder, train_idx, train_labels, val_idx, val_labels, backbone, class_names, params, seed, batch_size):
    """:func:`medtune.methods.coop.fit_coop`, encoding each training batch every epoch (CoOp's image encoder is frozen).

    Public-code style, the prompts go through CoOp's own text encoder (the whole context length).
    """
    import torch
    import torch.nn.functional as F

    from medtune.methods.coop import SPEC, PromptLearner, class_logits, frozen, lr_at
    from medtune.training import seed_everything

    p = {**SPEC["defaults"], **params}
    model = backbone.model
    gen = seed_everything(seed)
    device = model.positional_embedding.device
    scale = float(backbone.logit_scale)
    best = None
    with frozen(model):
        learner = PromptLearner(model, backbone.tokenizer, class_names, p["n_ctx"], p["ctx_init"], p["ctx_std"], gen)
        prompts = (lambda: upstream_prompt_features(model, learner)) if enc.style == "public" else (lambda: learner(model))
        y = torch.tensor(np.asarray(train_labels), dtype=torch.int64).to(device)
        val_x = enc.many(val_idx, batch_size).to(device)  # once per run
        val_y = torch.tensor(np.asarray(val_labels), dtype=torch.int64).to(device)
        optimizer = torch.optim.SGD([learner.ctx], lr=lr_at(0, p), momentum=float(p["momentum"]),
                                    weight_decay=float(p["weight_decay"]))
        batch, epochs = int(p["batch_size"]), int(p["epochs"])
        n = len(train_idx)
        stop = n - n % batch if n >= batch else n
        text = prompts()  # as fit_coop: an epoch's last prompt features also serve the next epoch's first step
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, p)
            order = torch.randperm(n, generator=gen)
            for start in range(0, stop, batch):
                sel = order[start : start + batch]
                with torch.no_grad():
                    x = enc(train_idx[sel.numpy()]).to(device)
                loss = F.cross_entropy(class_logits(x, text if text is not None else prompts(), scale), y[sel.to(device)])
                text = None
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.set_grad_enabled(epoch < epochs - 1):
                text = prompts()
            with torch.no_grad():
                acc = float((class_logits(val_x, text.detach(), scale).argmax(1) == val_y).float().mean())
            best = acc if best is None else max(best, acc)
    return best
