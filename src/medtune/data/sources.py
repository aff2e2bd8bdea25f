"""The registry of dataset sources, and the one entry point that prepares any of them.

Each source is registered once in :data:`SOURCES`: its name (the config's
``source``), the dataset keys it honours and those it requires, and its prepare
function ``(name, spec, out_dir)``, named as ``"module:function"`` so that reading
the registry (the config check when the workflow starts) imports nothing heavy.
Adding a source is its module with a prepare function, one line here, and its new
keys (if any) in the schema's dataset block; ``tests/test_data_sources.py`` checks
the schema's ``source`` enum and keys against this registry.

Downloadable sources (PCam; PubMedVision, of which only the sampled images are read
from the remote zips) are fetched into ``{path}`` (resumable, MD5-checked);
gated ones (MHIST, Osteosarcoma, WSSS4LUAD) must be placed there by the user, and
a missing file stops the job with a message saying what to download and where.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from medtune.data import inventory

# honoured by every source: the prompts are read by the text encoder and class_balance by
# the subsets, not by prepare
COMMON_KEYS = ("source", "prompts", "class_balance")
NOT_PREPARED = ("prompts", "class_balance")


def prepare_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What preparing a dataset reads of its entry: a new prompt template or class balance must
    not rebuild the canonical store (and, after it, every feature and run)."""
    return {k: v for k, v in spec.items() if k not in NOT_PREPARED}


@dataclass(frozen=True)
class Source:
    name: str
    prepare: str  # "module:function" taking (dataset name, spec, out_dir)
    keys: tuple[str, ...]  # dataset keys it honours, besides COMMON_KEYS
    required: tuple[str, ...] = ()
    # "module:function" listing the files it reads, for medtune.data.inventory (None: it reads none)
    files: str | None = "medtune.data.inventory:files_under_path"
    fetches: bool = False  # it downloads into its folder: files may appear while it runs

    def load(self) -> Callable[[str, Mapping[str, Any], Path], None]:
        return _function(self.prepare)

    def list_files(self, spec: Mapping[str, Any]) -> list[Path]:
        return _function(self.files)(spec) if self.files else []


def _function(name: str) -> Callable:
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


_REAL = ("path", "image_size", "seed")  # a folder of placed files, resized, split with a seed
SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("synthetic", "medtune.data.sources:prepare_synthetic",
               ("image_size", "seed", "sizes", "caption_style", "classes"), required=("sizes",), files=None),
        Source("pcam", "medtune.data.pcam:prepare_source", ("path", "url", "md5", "verify"), required=("path",), fetches=True),
        Source("mhist", "medtune.data.manual:prepare_source", (*_REAL, "label_map"), required=("path",)),
        Source("osteosarcoma", "medtune.data.manual:prepare_source", (*_REAL, "label_map"), required=("path",)),
        Source("wsss4luad", "medtune.data.manual:prepare_source", (*_REAL, "label_map"), required=("path",)),
        Source("image_folder", "medtune.data.folder:prepare_image_folder", (*_REAL, "classes", "site"), required=("path",),
               files="medtune.data.inventory:image_folder_files"),
        Source("manifest", "medtune.data.folder:prepare_manifest", (*_REAL, "classes"), required=("path",),
               files="medtune.data.inventory:manifest_files"),
        Source("camelyon17", "medtune.data.camelyon17:prepare_source", ("path", "image_size", "id_val"), required=("path",)),
        Source("pubmedvision", "medtune.data.pubmedvision:prepare_source",
               (*_REAL, "url", "n_samples", "zips", "full_download"), required=("path",), fetches=True),
    )
}


def config_problem(datasets: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The first dataset whose keys do not fit its source, as one line naming the key; None when all fit.

    A key the source does not honour (``image_size`` on PCam) would be silently
    ignored, so it is refused; the schema has already checked source names and types.
    """
    for name, spec in datasets.items():
        source = SOURCES.get(spec.get("source"))
        if source is None:
            return f"config key datasets.{name}.source: unknown source {spec.get('source')!r}"
        unused = [key for key in spec if key not in COMMON_KEYS and key not in source.keys]
        if unused:
            return (f"config key datasets.{name}.{unused[0]}: source {source.name!r} does not use it "
                    f"(it uses {', '.join(source.keys)})")
        missing = [key for key in source.required if key not in spec]
        if missing:
            return f"config key datasets.{name}.{missing[0]} is required for source {source.name!r}"
        if isinstance(spec.get("path"), str) and not spec["path"].strip():  # "" would be the working directory
            return f"config key datasets.{name}.path: empty; name the dataset's folder or file"
    return None


def prepare(name: str, spec: dict[str, Any], out_dir: str | Path, progress: bool = True,
            state: str = inventory.UNRECORDED) -> None:
    """Turn dataset ``name`` (its config ``spec``) into the canonical store at ``out_dir``, with the
    record of what it read (:mod:`medtune.data.inventory`; ``state`` is the value of the
    workflow's param it ran under).

    The sources' log lines (what was carved, skipped, verified, fetched) go to
    stderr, which a workflow job sends to its log.
    """
    import pandas as pd

    from medtune.data.convert import DROPPED_DUPLICATES
    from medtune.data.store import DatasetError, check_evaluable, read_samples

    problem = config_problem({name: spec})
    if problem:
        raise DatasetError(problem)
    out_dir, source = Path(out_dir), SOURCES[spec["source"]]
    where = f"dataset {name!r} ({out_dir})"
    before = inventory.snapshot(source.list_files(spec))
    try:
        with _info_to_stderr():
            source.load()(name, spec, out_dir)
        check_evaluable(read_samples(out_dir / "samples.csv", ["split", "label_name"]), where)
        files = inventory.record_files(before, source.list_files(spec), fetched=source.fetches, where=where)
    except DatasetError:
        for made in ("images.npy", "samples.csv"):  # a store that would mislead (mixed or contradictory data) goes
            (out_dir / made).unlink(missing_ok=True)
        raise
    dropped = out_dir / DROPPED_DUPLICATES
    duplicates = len(pd.read_csv(dropped)) if dropped.exists() else 0
    inventory.write_record(out_dir, state, files, dataset=name, duplicates_dropped=duplicates)


@contextlib.contextmanager
def _info_to_stderr() -> Iterator[None]:
    # Python shows only warnings when logging is not configured; a job log needs the info lines too
    logger = logging.getLogger("medtune")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def dataset_path(spec: Mapping[str, Any]) -> Path:
    """The folder of placed or downloaded files (``path``, ``~`` expanded)."""
    return Path(spec["path"]).expanduser()


def size_and_seed(spec: Mapping[str, Any]) -> dict[str, int]:
    """The ``size``/``seed`` keyword arguments of a converter, for the keys the config sets."""
    out = {"size": spec["image_size"]} if "image_size" in spec else {}
    if "seed" in spec:
        out["seed"] = spec["seed"]
    return out


def prepare_synthetic(name: str, spec: Mapping[str, Any], out_dir: Path) -> None:
    import pandas as pd

    from medtune.data import synthetic
    from medtune.data.store import image_writer, write_samples

    kwargs = {k: spec[k] for k in ("image_size", "seed", "caption_style") if k in spec}
    if "classes" in spec:
        kwargs["classes"] = tuple(spec["classes"])
    synthetic_spec = synthetic.SyntheticSpec(sizes=spec["sizes"], **kwargs)
    total, size = sum(synthetic_spec.sizes.values()), synthetic_spec.image_size
    # chunk by chunk into the store: PCam's size (327,680 images at 96 px) is 9 GB of pixels
    rows = []
    with image_writer(out_dir, (total, size, size, 3)) as out:
        for chunk_rows, images in synthetic.generate_chunks(synthetic_spec):
            start = int(chunk_rows["index"].iloc[0])
            out[start : start + len(images)] = images
            rows.append(chunk_rows)
    samples = pd.concat(rows, ignore_index=True)
    write_samples(samples.assign(site=samples["centre"]), total, out_dir)
