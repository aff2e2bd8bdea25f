from medtune import jobs


def main(smk):
    import pandas as pd

    from medtune.tables import write_study_tables

    as_list = lambda files: [files] if isinstance(files, str) else list(files)
    write_study_tables(
        pd.read_csv(smk.input.metrics), pd.read_csv(smk.input.costs), smk.params.studies, smk.params.folder, smk.params.methods,
        run_outputs=as_list(smk.input.runs), index_files=as_list(smk.input.robustness_index),
        cards=smk.params.cards, encodings=as_list(smk.input.encodings),
    )


jobs.run(main, snakemake)  # noqa: F821
