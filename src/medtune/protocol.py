"""Protocol cards: how a table's numbers were made, written beside the table.

A published leaderboard cannot be reproduced without knowing which weights, which
preprocessing, which prompts and which images made it. Each table gets
``results/tables/<table>.card.json`` and the same, short, under its Markdown (and so in
the Snakemake report). A card gathers what the jobs already record rather than asking
anything again:

- from the config (:func:`plan_cards`, pure Python, at DAG-build time): each backbone's
  entry and family, each dataset's prompt set (templates, class names, whether several
  templates are ensembled) for a table whose numbers depend on prompts, the methods and
  what they require, seeds, fractions and shot counts, the (method, backbone) pairs left out;
- from each test-split encoding job's ``encode.json`` (:func:`encode_record`): the weight
  digest, image size, mean and std, precision and device, the test images' ids digest, the
  software that encoded them;
- from each trained run's ``train.json``: the digest of its training subset's image ids;
- from the tables job itself: package versions and the commit.

A card holds no time stamp or host, so it changes only when how the numbers were made does:
a table that does not depend on prompts (its ``SPEC`` says ``"prompts": false``) keeps its
card when a template changes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

ENCODE_RECORD = "encode.json"
# the packages whose versions decide the numbers (distribution names)
PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "numpy", "scikit-learn", "scipy", "pandas", "snakemake")
# shown in a card's Markdown (the JSON keeps the whole digest)
SHORT = 12
# what a backbone's card entry takes from the encoding record of its test split
ENCODING_KEYS = ("weights", "image_size", "mean", "std", "precision", "device")


def ids_digest(indices: Iterable[int]) -> str:
    """sha256 of image ids (indices into the dataset's ``images.npy``), sorted, each written in
    decimal and followed by a newline: ``tail -n +2 subset.csv | cut -d, -f1 | sort -n | sha256sum``."""
    text = "".join(f"{int(i)}\n" for i in sorted(int(i) for i in indices))
    return hashlib.sha256(text.encode()).hexdigest()


def weights_digest(model) -> dict[str, Any]:
    """sha256 over a model's state dict (each key, dtype, shape and bytes, keys in sorted order) and
    its parameter count: the same weights give the same digest whatever file format or hub they
    came from, and a backbone without a checkpoint (seeded random weights) gets one too."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        value = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes whatever the dtype (bfloat16 too)
    return {"sha256": digest.hexdigest(), "parameters": sum(p.numel() for p in model.parameters())}


def commit(root: str | Path | None = None) -> str:
    """The git commit of the medtune checkout, ``+dirty`` when tracked files differ from it;
    ``unknown`` outside a checkout (an installed package, no git)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def software() -> dict[str, Any]:
    """Python, the versions of :data:`PACKAGES` installed (read from their metadata, nothing
    imported), and the commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": sys.version.split()[0], "packages": versions, "commit": commit()}


def precision(device) -> str:
    """What encoding computes in on ``device``: float16 autocast on CUDA, float32 elsewhere."""
    return "amp-float16" if str(device).startswith("cuda") else "float32"


def encode_record(backbone, spec: Mapping[str, Any], dataset: str, split: str, indices, conditions, device, batch_size: int) -> dict:
    """What an encoding job writes beside its features (``encode.json``)."""
    from medtune import backbones

    return {
        "backbone": backbone.name,
        "family": backbones.family_of(spec).name,
        "config": dict(spec),
        "weights": weights_digest(backbone.model),
        "image_size": int(backbone.image_size),
        "mean": [float(v) for v in backbone.mean],
        "std": [float(v) for v in backbone.std],
        "precision": precision(device),
        "device": str(device),
        "batch_size": int(batch_size),
        "dataset": dataset,
        "split": split,
        "images": len(indices),
        "ids_sha256": ids_digest(indices),
        "conditions": len(conditions),
        "software": software(),
    }


def prompt_set(prompts: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset's prompts as the card shows them: several templates are ensembled (the class's
    text feature is the mean of its templates' normalised features, renormalised)."""
    templates = list(prompts.get("templates", []))
    return {"templates": templates, "classnames": dict(prompts.get("classnames", {})), "ensembled": len(templates) > 1}


def plan_cards(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's part of every table's card, by table name (pure Python: the tables rule
    takes it as a parameter, so a change here reruns the tables)."""
    from medtune import backbones
    from medtune import studies as study_registry
    from medtune.plan import missing_capabilities

    cards = {}
    for study_name, study in config["studies"].items():
        methods = config["methods"]
        trains = any(methods[m]["training"] != "none" for m in study["methods"])
        # some method of the study reads the class text of a backbone that has it
        text_runs = any(
            "text_tower" in methods[m]["requires"] and not missing_capabilities(config, m, b) for m in study["methods"] for b in study["backbones"]
        )
        for table in study_registry.tables(study_name, study):
            card: dict[str, Any] = {"table": table.name, "study": study_name}
            card["backbones"] = {
                b: {"family": backbones.family_of(config["backbones"][b]).name, "config": config["backbones"][b]} for b in study["backbones"]
            }
            card["methods"] = {m: {"label": methods[m]["label"], "requires": methods[m]["requires"],
                                   "train_conditions": methods[m]["train_conditions"]} for m in study["methods"]}
            card["datasets"] = {}
            for d in study["datasets"]:
                card["datasets"][d] = {"source": config["datasets"][d]["source"]}
                if table.prompts and text_runs:
                    card["datasets"][d]["prompts"] = prompt_set(config["datasets"][d]["prompts"])
            if trains:
                card["seeds"] = list(study["seeds"])
                card["fractions"] = list(study["fractions"])
                card["shots"] = list(study["shots"])
            card["conditions"] = list(study["conditions"])
            card["skipped"] = [s["reason"] for s in study.get("skipped", [])]
            cards[table.name] = card
    return cards


def measured(card: Mapping[str, Any], encodings: Mapping[tuple[str, str], Mapping[str, Any]], runs: list[dict]) -> dict[str, Any]:
    """``card`` (:func:`plan_cards`'s) completed from the jobs' records: ``encodings`` maps
    (dataset, backbone) to the test split's ``encode.json``; ``runs`` are the manifests' entries
    (:func:`medtune.records.read_runs`) whose ``train.json`` give the subsets' digests."""
    card = {**card, "backbones": {b: dict(v) for b, v in card["backbones"].items()},
            "datasets": {d: dict(v) for d, v in card["datasets"].items()}}
    found: dict[str, dict[str, dict[str, Any]]] = {}  # backbone -> key -> dataset -> value
    environments: dict[str, dict[str, Any]] = {}
    for (dataset, backbone), record in sorted(encodings.items()):
        if dataset not in card["datasets"] or backbone not in card["backbones"]:
            continue
        for key in ENCODING_KEYS:
            found.setdefault(backbone, {}).setdefault(key, {})[dataset] = record.get(key)
        card["datasets"][dataset]["test"] = {"images": record.get("images"), "ids_sha256": record.get("ids_sha256")}
        env = record.get("software", {})
        environments.setdefault(repr(env), {**env, "encoded": []})["encoded"].append(f"{backbone}/{dataset}")
    for backbone, keys in found.items():
        for key, by_dataset in keys.items():
            values = list(by_dataset.values())
            # one value where every dataset's encoding agrees, else each dataset's (a card must not hide it)
            card["backbones"][backbone][key] = values[0] if all(v == values[0] for v in values) else {"differs": by_dataset}
    card["encoding_software"] = list(environments.values())
    subsets: dict[str, dict[str, set[str]]] = {}
    for run in runs:
        if (run["dataset"] not in card["datasets"] or run["backbone"] not in card["backbones"]
                or run["method"] not in card["methods"] or "record" not in run["files"]):
            continue
        digest = _subset_digest(run["files"]["record"])
        if digest is not None:
            name = f"seed{run['seed']}/" + (f"shots{run['shots']}" if run.get("shots") is not None else f"frac{run['fraction']:g}")
            subsets.setdefault(run["dataset"], {}).setdefault(name, set()).add(digest)
    if subsets:
        # one digest per subset; several would mean runs of the same subset trained on different images
        card["subsets"] = {d: {k: v.pop() if len(v) == 1 else sorted(v) for k, v in sorted(s.items())} for d, s in sorted(subsets.items())}
    return card


@lru_cache(maxsize=None)
def _subset_digest(record: str) -> str | None:
    """A run's training-subset digest from its ``train.json``, read once however many tables show the run."""
    from medtune.io import read_json

    return read_json(record).get("subset_sha256")


def markdown(card: Mapping[str, Any]) -> str:
    """The card in a few lines under a table (the JSON beside it has everything)."""
    lines = ["#### Protocol card", ""]
    tables = card.get("software", {})
    packages = ", ".join(f"{k} {v}" for k, v in tables.get("packages", {}).items())
    commit_ = tables.get("commit", "unknown")
    shown = commit_ if commit_ == "unknown" else commit_[:SHORT] + ("+dirty" if commit_.endswith("+dirty") else "")
    lines.append(f"- commit {shown}; tables made with Python {tables.get('python', '?')}, {packages}")
    for name, b in card["backbones"].items():
        config = b.get("config", {})
        source = ", ".join(f"{k} {v}" for k, v in config.items() if k in ("arch", "model", "pretrained", "checkpoint")) or "seeded random weights"
        if config.get("pretrain"):
            source += f", pretrained by the pipeline on {config['pretrain'].get('dataset')}"
        shown = f"{name} ({b['family']}: {source})"
        differs = {k: b[k]["differs"] for k in ENCODING_KEYS if isinstance(b.get(k), dict) and "differs" in b[k]}
        if "weights" not in b:
            shown += ": no encoding record (its features predate encode.json, or no frozen-feature run uses them)"
        elif not differs:
            shown += ": " + _encoding(b)
        else:  # encoded differently for different datasets
            datasets = next(iter(differs.values()))
            shown += ": " + "; ".join(f"for {d}, " + _encoding({k: differs[k][d] if k in differs else b[k] for k in ENCODING_KEYS}) for d in datasets)
        lines.append(f"- backbone {shown}")
    for name, d in card["datasets"].items():
        parts = [f"source {d['source']}"]
        if "test" in d and d["test"].get("ids_sha256"):
            parts.append(f"test split {d['test']['images']} images, ids sha256 {d['test']['ids_sha256'][:SHORT]}")
        if "prompts" in d:
            p = d["prompts"]
            templates = " + ".join(f"“{t}”" for t in p["templates"])
            parts.append(f"prompts {templates} ({'ensembled' if p['ensembled'] else 'one template'}"
                         + (f"; class names {', '.join(f'{k} → {v}' for k, v in p['classnames'].items())})" if p["classnames"] else ")"))
        lines.append(f"- dataset {name}: " + "; ".join(parts))
    if card.get("seeds"):
        lines.append(f"- seeds {', '.join(map(str, card['seeds']))}")
    for dataset, subsets in card.get("subsets", {}).items():
        shown = ", ".join(f"{k} {v[:SHORT] if isinstance(v, str) else ' or '.join(x[:SHORT] for x in v)}" for k, v in subsets.items())
        lines.append(f"- training subsets of {dataset} (image ids sha256): {shown}")
    if card.get("skipped"):
        lines.append(f"- not run: {'; '.join(card['skipped'])}")
    lines.append(f"- the whole card: {card['table']}.card.json")
    return "\n".join(lines) + "\n"


def _encoding(entry: Mapping[str, Any]) -> str:
    w = entry["weights"]
    mean, std = ", ".join(f"{v:.4g}" for v in entry["mean"]), ", ".join(f"{v:.4g}" for v in entry["std"])
    return (f"weights sha256 {w['sha256'][:SHORT]} ({w['parameters']:,} parameters), {entry['image_size']} px, "
            f"mean ({mean}), std ({std}), {entry['precision']} on {entry['device']}")
