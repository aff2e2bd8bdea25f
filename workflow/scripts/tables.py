from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.tables import write_study_tables

    write_study_tables(
        pd.read_csv(smk.input.metrics), pd.read_csv(smk.input.costs), smk.params.studies, smk.params.folder, smk.params.methods,
        run_outputs=jobs.as_list(smk.input.runs), index_files=jobs.as_list(smk.input.robustness_index),
        cards=smk.params.cards, encodings=jobs.as_list(smk.input.encodings),
    )


jobs.run(main, snakemake)  # noqa: F821
