from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.io import write_csv
    from medtune.subsets import SUBSET_COLUMNS, seed_subsets, train_rows

    train = train_rows(read_samples(smk.input.samples, columns=SUBSET_COLUMNS), smk.input.samples)
    balance = smk.params.class_balance
    per_seed = {}  # each seed's permutations are drawn once for all its fractions and shot counts
    for (seed, name), path in zip(smk.params.subsets, smk.output):
        if seed not in per_seed:
            per_seed[seed] = seed_subsets(train, int(seed), smk.params.fractions, smk.params.shots, balance)
        subset = per_seed[seed][name]
        counts = subset["label"].value_counts().sort_index()
        print(f"seed {seed} {name} (class_balance {balance}): {len(subset)} of {len(train)} images; per class {counts.to_dict()}")
        write_csv(subset, path)


jobs.run(main, snakemake)  # noqa: F821
