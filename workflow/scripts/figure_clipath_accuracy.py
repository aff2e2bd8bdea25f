from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.figures import accuracy_vs_fraction

    accuracy_vs_fraction(pd.read_csv(smk.input.metrics), smk.params.study, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
