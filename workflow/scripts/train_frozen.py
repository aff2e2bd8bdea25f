from medtune import jobs


def main(smk):
    from medtune.adapt import train_frozen

    # a transductive stage's job (rule train_transductive) also names its base's runs; a run on a
    # base without training data has no subset: its name is "" and it has no file
    names = smk.params.subset_names
    train_frozen(
        method=smk.params.method,
        runs=smk.params.runs,
        subsets=dict(zip(names, jobs.as_list(smk.input.subsets) or [None] * len(names))),
        out_dir=smk.output[0],
        train_dir=smk.input.train,
        val_dir=smk.input.val,
        text=smk.input.text or None,  # only for a method that requires a text tower
        samples=smk.input.samples,
        test_dir=smk.input.test,
        conditions=smk.params.conditions,
        backbone={"name": smk.wildcards.backbone, "spec": smk.params.get("spec"), "weights": smk.input.get("weights") or None},
        prompts=smk.params.get("prompts"),
        device=smk.params.get("device", "cpu"),
        progress=smk.params.progress,
        logit_subsets=smk.params.get("logit_subsets", ()),
        base_outputs=jobs.as_list(smk.input.base) if "base" in smk.input.keys() else None,
    )


jobs.run(main, snakemake)  # noqa: F821
