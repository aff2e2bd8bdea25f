from medtune import jobs
from medtune.data.sources import prepare


def main(smk):
    prepare(smk.wildcards.dataset, smk.params.spec, smk.output.images.rsplit("/", 1)[0], progress=smk.params.progress)


jobs.run(main, snakemake)  # noqa: F821
