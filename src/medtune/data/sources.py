"""One entry point that turns any configured dataset source into the canonical store.

Downloadable sources (PCam; PubMedVision, of which only the sampled images are read
from the remote zips) are fetched into ``{path}`` (resumable, MD5-checked);
gated ones (MHIST, Osteosarcoma, WSSS4LUAD) must be placed there by the user, and
a missing file stops the job with a message saying what to download and where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.store import DatasetError, write_dataset


def _path(name: str, spec: dict[str, Any]) -> Path:
    if "path" not in spec:
        raise DatasetError(f"config key datasets.{name}.path is required for source {spec['source']!r}")
    return Path(spec["path"]).expanduser()


def prepare(name: str, spec: dict[str, Any], out_dir: str | Path, progress: bool = True) -> None:
    source = spec["source"]
    size = {"size": spec["image_size"]} if "image_size" in spec else {}
    seed = {"seed": spec["seed"]} if "seed" in spec else {}
    if source == "synthetic":
        from medtune.data import synthetic

        kwargs = {k: spec[k] for k in ("image_size", "seed", "caption_style") if k in spec}
        if "classes" in spec:
            kwargs["classes"] = tuple(spec["classes"])
        images, samples = synthetic.generate(synthetic.SyntheticSpec(sizes=spec["sizes"], **kwargs))
        write_dataset(images, samples, out_dir)
    elif source == "pcam":
        from medtune.data import pcam

        raw = _path(name, spec)
        pcam.fetch(raw, base_url=spec.get("url", pcam.ZENODO))
        pcam.convert(raw, out_dir)
    elif source in ("mhist", "osteosarcoma", "wsss4luad"):
        from medtune.data import manual

        extra = {"classes": spec["label_map"]} if "label_map" in spec else {}
        manual.CONVERTERS[source](_path(name, spec), out_dir, **size, **seed, **extra)
    elif source == "image_folder":
        from medtune.data import folder

        folder.from_image_folder(_path(name, spec), out_dir, classes=spec.get("classes"), **size, **seed)
    elif source == "manifest":
        from medtune.data import folder

        folder.from_manifest(_path(name, spec), out_dir, classes=spec.get("classes"), **size, **seed)
    elif source == "pubmedvision":
        from medtune.data.pubmedvision import prepare_pubmedvision

        prepare_pubmedvision(out_dir, _path(name, spec), n=spec.get("n_samples", 4096), base_url=spec.get("url"), **size, **seed)
    else:
        raise DatasetError(f"dataset {name!r}: source {source!r} is not available in this version")
