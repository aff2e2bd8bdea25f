from medtune import jobs


def main(smk):
    import numpy as np

    from medtune.figures import corruption_gallery

    corruption_gallery(np.load(smk.input.images, mmap_mode="r"), 0, smk.params.conditions, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
