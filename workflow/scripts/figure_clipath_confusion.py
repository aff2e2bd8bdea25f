from medtune import jobs


def main(smk):
    from medtune.figures import best_run_confusion

    best_run_confusion(smk.input.metrics, smk.params.study, smk.params.heads, smk.input.test, smk.input.samples, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
