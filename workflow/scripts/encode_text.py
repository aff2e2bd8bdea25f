from medtune import jobs


def main(smk):
    from medtune.encode import encode_class_text

    encode_class_text(
        smk.wildcards.backbone,
        smk.params.spec,
        weights=smk.input.weights or None,
        samples=smk.input.samples,
        prompts=smk.params.prompts,
        out=smk.output[0],
        device=smk.params.device,
    )


jobs.run(main, snakemake)  # noqa: F821
