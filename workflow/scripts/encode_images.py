import os

from medtune import jobs


def main(smk):
    from medtune.encode import encode_split

    encode_split(
        smk.wildcards.backbone,
        smk.params.spec,
        weights=smk.input.weights or None,
        dataset_dir=os.path.dirname(smk.input.images),
        split=smk.wildcards.split,
        conditions=smk.params.conditions,
        out_dir=smk.output[0],
        device=smk.params.device,
        progress=smk.params.progress,
    )


jobs.run(main, snakemake)  # noqa: F821
