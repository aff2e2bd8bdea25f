import os

from medtune import jobs


def main(smk):
    from medtune.adapt import train_backbone

    train_backbone(
        method=smk.params.method,
        run=smk.params.run,
        backbone_spec=smk.params.spec,
        backbone_weights=smk.input.weights or None,
        dataset_dir=os.path.dirname(smk.input.images),
        subset=smk.input.subset,
        prompts=smk.params.prompts,
        conditions=smk.params.conditions,
        out_dir=os.path.dirname(smk.output.manifest),
        state_dir=smk.params.state_dir,
        device=smk.params.device,
        progress=smk.params.progress,
    )


jobs.run(main, snakemake)  # noqa: F821
