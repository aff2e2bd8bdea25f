from medtune import jobs


def main(smk):
    from medtune.adapt import train_frozen

    train_frozen(
        method=smk.params.method,
        runs=smk.params.runs,
        subsets=dict(zip(smk.params.subset_names, smk.input.subsets)),
        out_dir=smk.output[0],
        train_dir=smk.input.train,
        val_dir=smk.input.val,
        text=smk.input.text or None,  # only for a method that requires a text tower
        samples=smk.input.samples,
        test_dir=smk.input.test,
        conditions=smk.params.conditions,
        backbone={"name": smk.wildcards.backbone, "spec": smk.params.spec, "weights": smk.input.weights or None},
        prompts=smk.params.prompts,
        device=smk.params.device,
        progress=smk.params.progress,
        logit_subsets=smk.params.logit_subsets,
    )


jobs.run(main, snakemake)  # noqa: F821
