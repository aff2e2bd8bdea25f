from medtune import jobs


def main(smk):
    from medtune.tables import collect_costs, collect_metrics
    from medtune.io import write_csv

    write_csv(collect_metrics(smk.params.metrics), smk.output.metrics)
    write_csv(collect_costs(smk.params.records), smk.output.costs)


jobs.run(main, snakemake)  # noqa: F821
