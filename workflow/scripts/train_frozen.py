from medtune import jobs


def main(smk):
    from medtune.train import train_frozen

    train_frozen(
        method=smk.params.method,
        params=smk.params.hyper,
        seed=int(smk.wildcards.seed),
        train_dir=smk.input.train,
        val_dir=smk.input.val,
        text=smk.input.text,
        subset=smk.input.subset,
        samples=smk.input.samples,
        head_out=smk.output.head,
        record_out=smk.output.record,
        test_dir=smk.input.test,
        conditions=smk.params.conditions,
        metrics_out=smk.output.metrics,
        backbone={"name": smk.wildcards.backbone, "spec": smk.params.spec, "weights": smk.input.weights or None},
        prompts=smk.params.prompts,
        device=smk.params.device,
        run={"dataset": smk.wildcards.dataset, "method": smk.params.method, "backbone": smk.wildcards.backbone,
             "seed": int(smk.wildcards.seed), "fraction": float(smk.wildcards.fraction)},
    )


jobs.run(main, snakemake)  # noqa: F821
