# Tidy metric rows, then the seeds' tables and figures.

# seconds of work each: on a cluster they run where Snakemake runs instead of queueing
localrules:
    collect_metrics,
    tables,
    figure_clipath_accuracy,
    figure_clipath_training_time,
    figure_clipath_confusion,
    figure_pathclip_robustness,
    figure_corruption_gallery,
    figure_retrieval_examples,



rule collect_metrics:
    input:
        all_run_outputs(),
    output:
        metrics=f"{RESULTS}/metrics.csv",
        costs=f"{RESULTS}/costs.csv",
    params:
        metrics=all_metrics(),
        records=all_train_records(),
    log:
        f"{RESULTS}/logs/collect_metrics.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/collect_metrics.py"


rule tables:
    input:
        metrics=f"{RESULTS}/metrics.csv",
        costs=f"{RESULTS}/costs.csv",
    output:
        [report(f"{RESULTS}/tables/{name}.md", category="Tables") for name in TABLES]
        + [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "tex")],
    params:
        studies=config["studies"],
        folder=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/tables.py"


rule figure_clipath_accuracy:
    input:
        metrics=f"{RESULTS}/metrics.csv",
    output:
        png=report(
            f"{RESULTS}/figures/clipath_accuracy.png",
            caption="../report/clipath_accuracy.rst",
            category="CLIPath",
        ),
        pdf=f"{RESULTS}/figures/clipath_accuracy.pdf",
    params:
        study=lambda wc: config["studies"]["clipath"],
    log:
        f"{RESULTS}/logs/figures/clipath_accuracy.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_clipath_accuracy.py"


rule figure_pathclip_robustness:
    input:
        metrics=f"{RESULTS}/metrics.csv",
    output:
        png=report(
            f"{RESULTS}/figures/pathclip_robustness.png",
            caption="../report/pathclip_robustness.rst",
            category="PathCLIP robustness",
        ),
        pdf=f"{RESULTS}/figures/pathclip_robustness.pdf",
    params:
        study=lambda wc: config["studies"]["pathclip"],
    log:
        f"{RESULTS}/logs/figures/pathclip_robustness.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_pathclip_robustness.py"


rule figure_corruption_gallery:
    input:
        images=lambda wc: dataset_files(config["studies"]["pathclip"]["datasets"][0])["images"],
    output:
        png=report(
            f"{RESULTS}/figures/corruption_gallery.png",
            caption="../report/corruption_gallery.rst",
            category="PathCLIP robustness",
        ),
        pdf=f"{RESULTS}/figures/corruption_gallery.pdf",
    params:
        conditions=lambda wc: config["studies"]["pathclip"]["conditions"],
    log:
        f"{RESULTS}/logs/figures/corruption_gallery.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_corruption_gallery.py"


rule figure_clipath_training_time:
    input:
        costs=f"{RESULTS}/costs.csv",
    output:
        png=report(
            f"{RESULTS}/figures/clipath_training_time.png",
            caption="../report/clipath_training_time.rst",
            category="CLIPath",
        ),
        pdf=f"{RESULTS}/figures/clipath_training_time.pdf",
    params:
        study=lambda wc: config["studies"]["clipath"],
    log:
        f"{RESULTS}/logs/figures/clipath_training_time.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_clipath_training_time.py"


rule figure_clipath_confusion:
    input:
        unpack(confusion_inputs),
    output:
        png=report(
            f"{RESULTS}/figures/clipath_confusion.png",
            caption="../report/clipath_confusion.rst",
            category="CLIPath",
        ),
        pdf=f"{RESULTS}/figures/clipath_confusion.pdf",
    params:
        study=lambda wc: config["studies"]["clipath"],
        heads=lambda wc: [f"{run_dir(r)}/head.pt" for r in confusion_runs()],
    log:
        f"{RESULTS}/logs/figures/clipath_confusion.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_clipath_confusion.py"


rule figure_retrieval_examples:
    input:
        unpack(retrieval_example_inputs),
    output:
        png=report(
            f"{RESULTS}/figures/retrieval_examples.png",
            caption="../report/retrieval_examples.rst",
            category="PathCLIP robustness",
        ),
        pdf=f"{RESULTS}/figures/retrieval_examples.pdf",
    log:
        f"{RESULTS}/logs/figures/retrieval_examples.log",
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/figure_retrieval_examples.py"
