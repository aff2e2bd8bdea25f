from medtune import jobs


def main(smk):
    from medtune.studies import draw

    draw(smk.wildcards.figure, dict(smk.input.items()), smk.params.study, smk.params.methods, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
