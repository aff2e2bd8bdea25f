from medtune import jobs


def main(smk):
    from medtune.studies import draw

    inputs = dict(smk.input.items())
    for figure, png in zip(smk.params.figures, smk.output.png):
        draw(figure, inputs, smk.params.study, smk.params.methods, png)
        jobs.report(f"figure {figure} drawn")


jobs.run(main, snakemake)  # noqa: F821
