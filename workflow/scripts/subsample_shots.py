from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.io import write_csv
    from medtune.subsets import shot_subsets, train_rows

    train = train_rows(read_samples(smk.input.samples), smk.input.samples)
    shots = int(smk.wildcards.shots)
    write_csv(shot_subsets(train, [shots], int(smk.wildcards.seed))[shots], smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
