from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.io import write_csv
    from medtune.subsets import stratified_subsets, train_rows

    train = train_rows(read_samples(smk.input.samples), smk.input.samples)
    fraction = float(smk.wildcards.fraction)
    subset = stratified_subsets(train, [fraction], int(smk.wildcards.seed), smk.params.class_balance)[fraction]
    counts = subset["label"].value_counts().sort_index()
    print(f"class_balance {smk.params.class_balance}: {len(subset)} of {len(train)} images; per class {counts.to_dict()}")
    write_csv(subset, smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
