import os

from medtune import jobs


def main(smk):
    from medtune.pgd import attack_job

    attack_job(
        runs=smk.params.runs,
        run_outputs=jobs.as_list(smk.input.runs),
        backbone={"name": smk.wildcards.backbone, "spec": smk.params.spec, "weights": smk.input.weights or None},
        dataset_dir=os.path.dirname(smk.input.images),
        protocol=smk.wildcards.protocol,
        settings=smk.params.settings,
        n_images=smk.params.images,
        batch_size=smk.params.batch_size,
        out_dir=smk.output[0],
        device=smk.params.device,
    )


jobs.run(main, snakemake)  # noqa: F821
