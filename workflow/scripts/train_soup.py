import os

from medtune import jobs


def main(smk):
    from medtune.adapt import make_soup

    make_soup(
        method=smk.params.method,
        run=smk.params.run,
        ingredients=jobs.as_list(smk.input.ingredients),
        ingredient_module=smk.params.ingredient_module,
        backbone_spec=smk.params.spec,
        backbone_weights=smk.input.weights or None,
        dataset_dir=os.path.dirname(smk.input.images),
        prompts=smk.params.prompts,
        conditions=smk.params.conditions,
        out_dir=os.path.dirname(smk.output.manifest),
        device=smk.params.device,
        progress=smk.params.progress,
    )


jobs.run(main, snakemake)  # noqa: F821
