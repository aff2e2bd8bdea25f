"""Encode once: L2-normalised image features per backbone x split x condition,
and class-prompt text features per backbone x dataset.

Zero-shot, linear probe, RFC and CoOp all train and evaluate from these arrays,
so a backbone sees every image of a condition exactly once.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medtune.jobs import report
from medtune.models import Backbone
from medtune.preprocess import normalize, resize_crop, to_device_batch

ENCODE_BATCH_SIZE = 256  # images per batch when a backbone's spec sets no encode_batch_size


def encode_batch_size(spec: dict) -> int:
    """Images per encoding batch of a backbone (``backbones.<name>.encode_batch_size``)."""
    return int(spec.get("encode_batch_size", ENCODE_BATCH_SIZE))


def class_prompts(class_names: Sequence[str], templates: Sequence[str], classnames: dict | None = None) -> list[list[str]]:
    """One list of prompts per class; ``classnames`` maps a label name to the words used in prompts."""
    classnames = classnames or {}
    return [[t.format(c=classnames.get(name, name)) for t in templates] for name in class_names]


@torch.inference_mode()
def encode_text(backbone: Backbone, texts: Sequence[str], device="cpu", batch_size: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = backbone.tokenizer(list(texts[start : start + batch_size])).to(device)
        out.append(F.normalize(backbone.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def prompt_ensemble(backbone: Backbone, prompts: list[list[str]], device="cpu") -> np.ndarray:
    """Per class: mean of the normalised template embeddings, renormalised (CLIP's prompt ensembling)."""
    flat = [p for per_class in prompts for p in per_class]
    feats = encode_text(backbone, flat, device)
    feats = feats.view(len(prompts), -1, feats.shape[-1])
    return F.normalize(feats.mean(dim=1), dim=-1).cpu().numpy().astype(np.float32)


def image_batches(images: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    from medtune.data.store import read_rows

    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        yield idx, read_rows(images, idx)  # file reads: a batch in memory, not every page read so far


@torch.inference_mode()
def encode_images(
    backbone: Backbone,
    images: np.ndarray,
    indices: np.ndarray,
    conditions: Sequence[str] = ("clean",),
    device="cpu",
    batch_size: int = ENCODE_BATCH_SIZE,
    progress: bool = True,
    log_as: str | None = None,
) -> dict[str, np.ndarray]:
    """``{condition: float32 N x D}`` for the samples ``indices`` of the uint8 store ``images``.

    Each batch is moved to the device once, resized once, then corrupted and
    encoded under every condition. With ``log_as`` (and no progress bar) every batch
    done prints ``medtune: encoded batch i/N of {log_as}``.
    """
    from medtune.corrupt import apply_many

    from medtune.protocol import precision

    device = torch.device(device)
    use_amp = precision(device) != "float32"  # what the protocol card reports
    memory_format = torch.channels_last if use_amp else torch.contiguous_format  # faster convolutions on GPUs
    if use_amp:
        backbone.model.to(memory_format=memory_format)
    # each condition's rows are written into one array as they come: no list of batches to
    # concatenate (twice the memory) at PCam's 32,768 test images x 29 conditions
    out: dict[str, np.ndarray] = {}
    batches = image_batches(images, np.asarray(indices), batch_size)
    total, done = (len(indices) + batch_size - 1) // batch_size, 0  # done: rows encoded so far
    bar = tqdm(batches, total=total, desc=f"encode {backbone.name}", disable=not progress, mininterval=5)
    for batch_no, (idx, batch) in enumerate(bar, start=1):
        x = resize_crop(to_device_batch(batch, device), backbone.image_size)
        keys = torch.as_tensor(idx, device=device)
        for condition, xc in apply_many(x, conditions, keys=keys):
            # every batch but x itself is ours (apply_many's promise): normalised over itself on a CPU
            owned = device.type == "cpu" and xc is not x and xc.is_contiguous()
            with torch.autocast(device.type, enabled=use_amp):
                feats = backbone.model.encode_image(normalize(xc, backbone.mean, backbone.std, owned).contiguous(memory_format=memory_format))
            rows = F.normalize(feats.float(), dim=-1).cpu().numpy()
            if condition not in out:
                out[condition] = np.empty((len(indices), rows.shape[1]), dtype=np.float32)
            out[condition][done : done + len(rows)] = rows
        done += len(idx)
        if log_as is not None and not progress:
            report(f"encoded batch {batch_no}/{total} of {log_as}")
    return {c: out[c] for c in conditions}


def encode_split(
    name: str,
    spec: dict,
    weights,
    dataset_dir,
    split: str,
    conditions: Sequence[str],
    out_dir,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Write ``{out_dir}/{condition}.npy`` for every condition, rows in samples.csv order, and
    ``encode.json``: how they were made (:func:`medtune.protocol.encode_record`: weight digest,
    input size, mean/std, precision, the images' ids digest, software), for the protocol cards.

    The folder is filled under a temporary name and renamed at the end, so a
    killed job leaves no partial feature set behind.
    """
    from pathlib import Path

    from medtune import memory
    from medtune.data.store import load_dataset
    from medtune.io import atomic_dir, write_json
    from medtune.models import load_backbone
    from medtune.protocol import ENCODE_RECORD, encode_record
    from medtune.training import resolve_device

    dev = resolve_device(device)
    dataset = load_dataset(dataset_dir)
    rows = dataset.split(split)
    backbone = load_backbone(name, spec, weights=weights, device=str(dev))
    batch_size = encode_batch_size(spec)
    memory.announce(backbone, batch_size, dev)
    feats = encode_images(backbone, dataset.images, rows["index"].to_numpy(), conditions, dev, batch_size, progress, f"the {split} split")
    record = encode_record(backbone, spec, Path(dataset_dir).name, split, rows["index"].to_numpy(), conditions, dev, batch_size)
    with atomic_dir(out_dir) as tmp:
        for condition, array in feats.items():
            np.save(tmp / f"{condition}.npy", array)
        write_json(record, tmp / ENCODE_RECORD)


def encode_class_text(name: str, spec: dict, weights, samples, prompts: dict, out, device: str = "auto") -> None:
    """``text.npz``: the class-prompt classifier (C x D), its class names and the logit scale."""
    from medtune.data.store import read_samples
    from medtune.io import atomic_path
    from medtune.models import load_backbone
    from medtune.training import resolve_device

    dev = resolve_device(device)
    table = read_samples(samples)
    class_names = table[["label", "label_name"]].drop_duplicates().sort_values("label")["label_name"].tolist()
    backbone = load_backbone(name, spec, weights=weights, device=str(dev))
    per_class = class_prompts(class_names, prompts["templates"], prompts.get("classnames"))
    classifier = prompt_ensemble(backbone, per_class, dev)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, classifier=classifier, class_names=np.array(class_names), logit_scale=backbone.logit_scale)
