# Tidy metric rows, then the tables and figures each study declares (medtune.studies).


# seconds of work each: on a cluster they run where Snakemake runs instead of queueing
localrules:
    collect_metrics,
    tables,


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


# One job per study draws all of its figures: a job per figure paid for a fresh interpreter,
# pandas and matplotlib (and torch, for the studies whose figures read runs or images) ten times
# on the default. Each figure stays a declared output of its own in the report, with its caption.
for _study in FIGURE_STUDIES:

    rule:
        name:
            f"figures_{_study}"
        input:
            unpack(lambda wc, study=_study: study_figure_inputs(study)),
        output:
            png=[
                report(
                    f"{RESULTS}/figures/{name}.png",
                    caption=caption_file(name),
                    category=study_registry.registered()[_study].label,
                )
                for name in study_figures(_study)
            ],
            pdf=[f"{RESULTS}/figures/{name}.pdf" for name in study_figures(_study)],
        log:
            f"{RESULTS}/logs/figures/{_study}.log",
        benchmark:
            f"{RESULTS}/benchmarks/figures/{_study}.tsv"
        localrule: True
        conda:
            "../../envs/medtune.yaml"
        params:
            figures=study_figures(_study),
            study=config["studies"][_study],
            methods=plan.method_labels(config),
        script:
            "../scripts/figures.py"
