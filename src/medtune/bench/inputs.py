"""What the model-running figures run on: a random backbone, a synthetic store, and the
embedded default's settings, validated as the workflow validates them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]  # the workflow's folder: Snakefile, config/


@contextlib.contextmanager
def quiet_open_clip():
    """open_clip logs a warning for every model built without weights; the bench builds them on purpose."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def make_backbone(arch: str = "medtune-tiny", image_size: int | None = None, device: str = "cpu"):
    """A randomly initialised backbone (no weights needed); ``image_size`` overrides the architecture's."""
    from medtune.models import Backbone, load_backbone, registered_open_clip

    with quiet_open_clip():
        if image_size is None:
            return load_backbone(arch.lower(), {"arch": arch}, device=device)
        import torch

        torch.manual_seed(0)
        open_clip = registered_open_clip()
        model = open_clip.create_model(arch, force_image_size=image_size, output_dict=True)
    model.to(device).eval()
    pp = model.visual.preprocess_cfg
    return Backbone(arch.lower(), model, open_clip.get_tokenizer(arch), int(image_size), tuple(pp["mean"]), tuple(pp["std"]))


def make_data(n_train: int, n_val: int, n_test: int, image_size: int = 64, seed: int = 0):
    """The synthetic H&E store (uint8 N x H x W x 3) and its sample table."""
    from medtune.data.synthetic import SyntheticSpec, generate

    sizes = {k: v for k, v in {"train": n_train, "val": n_val, "test": n_test}.items() if v > 0}
    return generate(SyntheticSpec(sizes=sizes, image_size=image_size, seed=seed))


def embedded_default(repo: Path = REPO) -> dict[str, Any]:
    """``repo``'s ``config/config.yaml`` with every default filled in, as the Snakefile validates it.

    Raises :class:`medtune.plan.ConfigError` naming the file or key when it is missing or invalid.
    """
    import yaml

    from medtune import plan

    path = Path(repo) / "config" / "config.yaml"
    try:
        plan.check_config_file(path)
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise plan.ConfigError(f"config file {path}: {err.strerror}") from None
    return plan.validate(raw)


def method_params(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's settings in a validated config (``methods.<name>.params``, defaults included), copied."""
    return {name: dict(method["params"]) for name, method in config["methods"].items()}


def prompt_templates(config: dict[str, Any]) -> list[str]:
    """The class-prompt templates of the config's synthetic dataset (the store the bench generates)."""
    datasets = list(config["datasets"].values())
    synthetic = [d for d in datasets if d.get("source") == "synthetic"] or datasets
    return list(synthetic[0]["prompts"]["templates"])
