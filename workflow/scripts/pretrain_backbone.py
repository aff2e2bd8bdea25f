from medtune import jobs


def main(smk):
    from medtune.pretrain import pretrain_backbone

    pretrain_backbone(
        smk.wildcards.backbone,
        smk.params.spec,
        images=smk.input.images,
        samples=smk.input.samples,
        weights_out=smk.output.weights,
        record_out=smk.output.record,
        state_path=smk.params.state,
        device=smk.params.device,
        progress=smk.params.progress,
    )


jobs.run(main, snakemake)  # noqa: F821
