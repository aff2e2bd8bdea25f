"""medtune: adapting CLIP to pathology and medical images, as a Snakemake pipeline."""

__version__ = "0.1.0"
