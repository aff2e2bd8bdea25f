import os

from medtune import jobs


def main(smk):
    from medtune.adapt import zeroshot_run

    zeroshot_run(
        smk.params.run,
        text=smk.input.text or None,  # none on a backbone without a text tower
        samples=smk.input.samples,
        test_dir=smk.input.test,
        conditions=smk.params.conditions,
        out_dir=os.path.dirname(smk.output.manifest),
        val_dir=dict(smk.input.items()).get("val"),
    )


jobs.run(main, snakemake)  # noqa: F821
