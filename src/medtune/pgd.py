"""Untargeted L-infinity PGD with a random start (Madry et al. 2018) against a frozen encoder and a
trained head, in pixel space before normalisation, within the valid pixel range [0, 1].

Each step moves the image by ``step * sign(grad)`` of the cross-entropy of the head's logits,
then projects the perturbation back into the ball (``|delta| <= epsilon``) and the image into
[0, 1], as ``torchattacks.PGD`` and TeCoA's ``attack_pgd`` do (the start: ``delta`` uniform in
the ball, drawn as torch's ``uniform_`` draws it). Radii are absolute (TeCoA: 1/255, 4/255) or
a fraction of each image's own range, per channel (THUNDER's ``pgd_attack_linear.py``: epsilon
and step times ``max - min`` of the channel). THUNDER attacks the normalised tensor; its ball
mapped back to pixels is this one, since normalising divides a channel and its range by the
same std. Two differences remain, both said in the docs: THUNDER clips to each image's own
min..max rather than to the valid range, and draws its start in [-epsilon, epsilon] unscaled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medtune import attacks

Forward = Callable[[torch.Tensor], torch.Tensor]
ATTACK_METRICS = ("accuracy", "balanced_accuracy", "ece15", "ece5")


def radius(images: torch.Tensor, value: float, scale: float | None) -> torch.Tensor:
    """N x C x 1 x 1 radii: ``value * scale``, or ``value`` times each image's channel range when ``scale`` is None."""
    if scale is None:
        span = images.amax(dim=(2, 3), keepdim=True) - images.amin(dim=(2, 3), keepdim=True)
        return value * span
    return torch.full((*images.shape[:2], 1, 1), value * scale, dtype=images.dtype, device=images.device)


def pgd(forward: Forward, images: torch.Tensor, labels: torch.Tensor, epsilon: torch.Tensor, step: torch.Tensor, steps: int,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images (detached) within ``epsilon`` of ``images`` (float in [0, 1]), N x C x 1 x 1 radii."""
    x = images.detach()
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    delta = torch.addcmul(-epsilon, u, 2 * epsilon)  # uniform_(-eps, eps)'s own arithmetic: the same bits
    adv = torch.clamp(x + delta, 0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(forward(adv), labels)
        if not loss.requires_grad:
            raise ValueError("the head's logits do not depend on the image differentiably (e.g. kNN's votes): PGD needs a gradient")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        delta = torch.clamp(adv - x, min=-epsilon, max=epsilon)
        adv = torch.clamp(x + delta, 0, 1).detach()
    return adv


def classifier(backbone, head) -> Forward:
    """Pixels in [0, 1] at the model's input size -> the head's logits: normalise, encode, L2-normalise
    (the cached features' form), head; differentiable throughout."""
    from medtune.preprocess import normalize

    def forward(x: torch.Tensor) -> torch.Tensor:
        feats = backbone.model.encode_image(normalize(x, backbone.mean, backbone.std))
        return head(F.normalize(feats.float(), dim=-1))

    return forward


def attacked_positions(n_test: int, n_images: int | None, seed: int) -> np.ndarray:
    """Which test images are attacked: a seeded draw of ``n_images`` (all when None), in split order."""
    if n_images is None or n_images >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).permutation(n_test)[:n_images])


def _generator(device: torch.device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def attack_logits(forward: Forward, images: np.ndarray, indices: np.ndarray, labels: np.ndarray, image_size: int,
                  settings: dict[str, Any], seed: int, device: torch.device, batch_size: int) -> dict[float, np.ndarray]:
    """{epsilon: N x C logits} of the images ``indices`` of the uint8 store, unattacked (epsilon 0) and under
    PGD at each of the protocol's radii; each radius attacks from its own seeded start."""
    from medtune.data.store import read_rows
    from medtune.preprocess import resize_crop, to_device_batch

    scale = attacks.pixel_scale(settings)
    out: dict[float, list[np.ndarray]] = {e: [] for e in [0, *settings["epsilons"]]}
    generators = {e: _generator(device, seed, i) for i, e in enumerate(settings["epsilons"])}
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = resize_crop(to_device_batch(read_rows(images, idx), device), image_size)
        y = torch.as_tensor(labels[start : start + batch_size], device=device)
        with torch.no_grad():
            out[0].append(forward(x).cpu().numpy())
        for e in settings["epsilons"]:
            adv = pgd(forward, x, y, radius(x, e, scale), radius(x, settings["step"], scale), settings["steps"], generators[e])
            with torch.no_grad():
                out[e].append(forward(adv).cpu().numpy())
    return {e: np.concatenate(chunks) for e, chunks in out.items()}


def attack_job(runs: list[dict[str, Any]], run_outputs, backbone: dict[str, Any], dataset_dir, protocol: str,
               settings: dict[str, Any], n_images: int | None, batch_size: int, out_dir, device: str = "auto") -> None:
    """One protocol against every run listed (one dataset, backbone and method): ``out_dir/{run setting}/metrics.csv``
    (the run's labels, a ``pgd-{protocol}-{epsilon}`` condition per radius, clean first) and ``out_dir/runs.json``."""
    import pandas as pd

    from medtune.data.store import load_dataset
    from medtune.evaluate import METRIC_COLUMNS
    from medtune.heads import load_head
    from medtune.io import atomic_dir, write_csv
    from medtune.jobs import report
    from medtune.metrics import classification_metrics
    from medtune.models import freeze, load_backbone
    from medtune.plan import Run, format_fraction
    from medtune.records import read_runs, write_manifest
    from medtune.training import resolve_device

    dev = resolve_device(device)
    dataset = load_dataset(dataset_dir)
    test_rows = dataset.split("test")
    model = load_backbone(backbone["name"], backbone["spec"], weights=backbone.get("weights"), device=str(dev))
    freeze(model.model)
    made = {tuple(r[k] for k in ("method", "seed", "fraction", "shots")): r for r in read_runs(run_outputs)}
    manifest = []
    with atomic_dir(out_dir) as tmp:
        for number, run in enumerate(runs, start=1):
            identity = Run(**{k: run[k] for k in ("dataset", "method", "backbone", "seed", "shots")},
                           fraction=None if run["fraction"] is None else format_fraction(run["fraction"]))
            found = made.get(tuple(run[k] for k in ("method", "seed", "fraction", "shots")))
            if found is None:
                raise ValueError(f"no head of run {identity.path} among the run outputs given to the attack")
            head = load_head(found["files"]["head"]).to(dev)
            for p in head.parameters():
                p.requires_grad_(False)
            picked = attacked_positions(len(test_rows), n_images, run["seed"] or 0)
            labels = test_rows["label"].to_numpy()[picked]
            logits = attack_logits(classifier(model, head), dataset.images, test_rows["index"].to_numpy()[picked], labels,
                                   model.image_size, settings, run["seed"] or 0, dev, batch_size)
            # accuracy, balanced accuracy and calibration, as every run reports under every condition;
            # not top-k or AUC (top-3 of a few hundred attacked images could read 100.0 for every model)
            rows = [
                (attacks.condition(protocol, e), "all", metric, value)
                for e, found_logits in logits.items()
                for metric, value in classification_metrics(labels, found_logits).items()
                if metric in ATTACK_METRICS
            ]
            table = pd.DataFrame(rows, columns=["condition", "group", "metric", "value"])
            for i, key in enumerate(["dataset", "method", "backbone", "seed", "fraction", "shots"]):
                table.insert(i, key, run.get(key))
            folder = identity.setting
            write_csv(table[METRIC_COLUMNS], Path(tmp) / folder / "metrics.csv")
            manifest.append({**run, "files": {"metrics": f"{folder}/metrics.csv"}})
            accuracy = {e: float((l.argmax(1) == labels).mean()) for e, l in logits.items()}
            report(f"{protocol} attack on run {identity.path} ({number}/{len(runs)}): accuracy by epsilon {accuracy}")
        write_manifest(manifest, tmp)
