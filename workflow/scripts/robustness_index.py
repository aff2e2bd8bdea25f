from medtune import jobs


def main(smk):
    from medtune.robustness_index import index_job

    index_job(smk.input.features, smk.input.samples, smk.params.split, smk.params.settings,
              {"dataset": smk.wildcards.dataset, "backbone": smk.wildcards.backbone}, smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
