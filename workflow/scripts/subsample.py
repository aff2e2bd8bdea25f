from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.io import write_csv
    from medtune.subsets import stratified_subsets, train_rows

    train = train_rows(read_samples(smk.input.samples), smk.input.samples)
    fraction = float(smk.wildcards.fraction)
    write_csv(stratified_subsets(train, [fraction], int(smk.wildcards.seed))[fraction], smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
