from medtune import jobs


def main(smk):
    import numpy as np

    from medtune.data.store import read_samples
    from medtune.figures import retrieval_examples

    test = read_samples(smk.input.samples).query("split == 'test'")
    features = np.load(f"{smk.input.test}/clean.npy")
    images = np.load(smk.input.images, mmap_mode="r")
    retrieval_examples(images, test["index"].to_numpy(), test["label"].to_numpy(), features, smk.output.png)


jobs.run(main, snakemake)  # noqa: F821
