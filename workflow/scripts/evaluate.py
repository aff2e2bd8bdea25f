from medtune import jobs


def main(smk):
    from medtune.data.store import read_samples
    from medtune.evaluate import evaluate_run, run_labels
    from medtune.io import write_csv
    from medtune.train import zeroshot_head

    zeroshot_head(smk.input.text, smk.output.head)
    samples = read_samples(smk.input.samples)
    rows = evaluate_run(
        smk.output.head,
        smk.input.test,
        samples[samples["split"] == "test"],
        smk.params.conditions,
        run_labels(smk.params.run),
    )
    write_csv(rows, smk.output.metrics)


jobs.run(main, snakemake)  # noqa: F821
