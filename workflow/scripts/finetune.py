from medtune import jobs


def main(smk):
    from medtune.train import train_finetune

    train_finetune(
        method=smk.wildcards.tuned,
        params=smk.params.hyper,
        seed=int(smk.wildcards.seed),
        backbone_name=smk.wildcards.backbone,
        backbone_spec=smk.params.spec,
        backbone_weights=smk.input.weights or None,
        dataset_dir=smk.input.images.rsplit("/", 1)[0],
        subset=smk.input.subset,
        prompts=smk.params.prompts,
        conditions=smk.params.conditions,
        weights_out=smk.output.weights,
        head_out=smk.output.head,
        record_out=smk.output.record,
        metrics_out=smk.output.metrics,
        run={"dataset": smk.wildcards.dataset, "method": smk.wildcards.tuned, "backbone": smk.wildcards.backbone,
             "seed": int(smk.wildcards.seed), "fraction": float(smk.wildcards.fraction)},
        state_dir=smk.params.state_dir,
        device=smk.params.device,
        progress=smk.params.progress,
    )


jobs.run(main, snakemake)  # noqa: F821
