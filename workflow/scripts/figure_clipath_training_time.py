from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.figures import training_time_vs_fraction

    training_time_vs_fraction(pd.read_csv(smk.input.costs), smk.params.study, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
