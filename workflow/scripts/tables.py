from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.tables import write_study_tables

    runs = smk.input.runs
    write_study_tables(
        pd.read_csv(smk.input.metrics), pd.read_csv(smk.input.costs), smk.params.studies, smk.params.folder, smk.params.methods,
        run_outputs=[runs] if isinstance(runs, str) else list(runs),
    )


jobs.run(main, snakemake)  # noqa: F821
