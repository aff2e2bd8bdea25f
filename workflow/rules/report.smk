# Tidy metric rows, then the tables and figures each study declares (medtune.studies).


# seconds of work each: on a cluster they run where Snakemake runs instead of queueing
localrules:
    collect_metrics,
    tables,
    figure,


rule collect_metrics:
    input:
        # the attacks' metric rows carry their runs' labels, as the runs' own do
        all_run_outputs() + attack_outputs(),
    output:
        metrics=f"{RESULTS}/metrics.csv",
        costs=f"{RESULTS}/costs.csv",
    log:
        f"{RESULTS}/logs/collect_metrics.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_metrics.tsv"
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/collect_metrics.py"


rule tables:
    input:
        metrics=f"{RESULTS}/metrics.csv",
        costs=f"{RESULTS}/costs.csv",
        # run manifests: tables that declare inputs [runs] read the runs' predictions
        runs=all_run_outputs(),
        robustness_index=robustness_index_outputs(),
        # the test features' encoding records: weights, preprocessing and precision for the protocol cards
        encodings=evaluated_test_features(),
    output:
        [report(f"{RESULTS}/tables/{name}.md", category="Tables") for name in TABLES]
        + [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "tex", "card.json")],
    log:
        f"{RESULTS}/logs/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
    conda:
        "../../envs/medtune.yaml"
    params:
        studies=config["studies"],
        methods=plan.method_labels(config),
        # each table's protocol card as the config makes it (a prompt change reaches only the cards that show prompts)
        cards=protocol.plan_cards(config),
        folder=lambda wc, output: os.path.dirname(output[0]),
    script:
        "../scripts/tables.py"


rule figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            f"{RESULTS}/figures/{{figure}}.png",
            caption="../report/figure.rst",
            category=lambda wc: figure_study(wc)[0].label,
        ),
        pdf=f"{RESULTS}/figures/{{figure}}.pdf",
    log:
        f"{RESULTS}/logs/figures/{{figure}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/{{figure}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    params:
        study=lambda wc: figure_study(wc)[2],
        methods=plan.method_labels(config),
        caption=lambda wc: figure_study(wc)[1].caption,
    script:
        "../scripts/figure.py"
