from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.evaluate import evaluate_run, run_labels
    from medtune.io import write_csv

    samples = read_samples(smk.input.samples)
    rows = evaluate_run(
        smk.input.head,
        smk.input.test,
        samples[samples["split"] == "test"],
        smk.params.conditions,
        run_labels(smk.params.run),
    )
    write_csv(rows, smk.output[0])


jobs.run(main, snakemake)  # noqa: F821
