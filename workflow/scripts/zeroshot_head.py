from medtune import jobs


def main(smk):
    from medtune.train import zeroshot_head

    zeroshot_head(smk.input.text, smk.output.head)


jobs.run(main, snakemake)  # noqa: F821
