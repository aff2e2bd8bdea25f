from medtune import jobs


def main(smk):
    from medtune.adapt import train_frozen

    as_list = lambda named: [named] if isinstance(named, str) else list(named)  # noqa: E731
    # a run on a base without training data has no subset: its name is "" and it has no file
    subsets = dict(zip(smk.params.subset_names, as_list(smk.input.subsets) or [None] * len(smk.params.subset_names)))
    train_frozen(
        method=smk.params.method,
        runs=smk.params.runs,
        subsets=subsets,
        out_dir=smk.output[0],
        train_dir=smk.input.train,
        val_dir=smk.input.val,
        text=smk.input.text,
        samples=smk.input.samples,
        test_dir=smk.input.test,
        conditions=smk.params.conditions,
        progress=smk.params.progress,
        base_outputs=as_list(smk.input.base),
    )


jobs.run(main, snakemake)  # noqa: F821
