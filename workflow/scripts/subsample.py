from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.io import write_csv
    from medtune.subsets import stratified_subsets

    samples = read_samples(smk.input.samples)
    train = samples[samples["split"] == "train"]
    if train.empty:
        raise ValueError(f"{smk.input.samples}: no 'train' split to subsample")
    fraction = float(smk.wildcards.fraction)
    subset = stratified_subsets(train, [fraction], int(smk.wildcards.seed))[fraction]
    write_csv(subset, smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
