import os

from medtune import jobs


def main(smk):
    from medtune.pgd import attack_job

    runs = smk.input.runs
    attack_job(
        runs=smk.params.runs,
        run_outputs=[runs] if isinstance(runs, str) else list(runs),
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
