import os

from medtune import jobs
from medtune.data.sources import prepare


def main(smk):
    prepare(smk.wildcards.dataset, smk.params.spec, os.path.dirname(smk.output.images), progress=smk.params.progress,
            state=smk.params.source_state)


jobs.run(main, snakemake)  # noqa: F821
