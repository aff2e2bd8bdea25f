from medtune import jobs


def main(smk):
    from medtune.io import write_csv
    from medtune.tables import collect_costs, collect_metrics

    write_csv(collect_metrics(smk.input), smk.output.metrics)
    write_csv(collect_costs(smk.input), smk.output.costs)


jobs.run(main, snakemake)  # noqa: F821
