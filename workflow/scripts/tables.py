from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.tables import write_study_tables

    runs, index = smk.input.runs, smk.input.robustness_index
    write_study_tables(
        pd.read_csv(smk.input.metrics), pd.read_csv(smk.input.costs), smk.params.studies, smk.params.folder, smk.params.methods,
        run_outputs=[runs] if isinstance(runs, str) else list(runs),
        index_files=[index] if isinstance(index, str) else list(index),
    )


jobs.run(main, snakemake)  # noqa: F821
