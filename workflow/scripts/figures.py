from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.figures import accuracy_vs_fraction

    accuracy_vs_fraction(pd.read_csv(smk.input.metrics), smk.params.studies["clipath"], smk.output.accuracy)


jobs.run(main, snakemake)  # noqa: F821
