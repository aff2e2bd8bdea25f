# Tidy metric rows, then the seeds' tables and figures.


rule collect_metrics:
    input:
        metrics=all_metrics(),
        records=all_train_records(),
    output:
        metrics=f"{RESULTS}/metrics.csv",
        costs=f"{RESULTS}/costs.csv",
    log:
        f"{RESULTS}/logs/collect_metrics.log",
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
        folder=f"{RESULTS}/tables",
    log:
        f"{RESULTS}/logs/tables.log",
    script:
        "../scripts/tables.py"


rule figure_clipath_accuracy:
    input:
        metrics=f"{RESULTS}/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/clipath_accuracy.png",
            caption="../report/clipath_accuracy.rst",
            category="CLIPath",
        ),
    params:
        study=lambda wc: config["studies"]["clipath"],
    log:
        f"{RESULTS}/logs/figures/clipath_accuracy.log",
    script:
        "../scripts/figure_clipath_accuracy.py"


rule figure_pathclip_robustness:
    input:
        metrics=f"{RESULTS}/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/pathclip_robustness.png",
            caption="../report/pathclip_robustness.rst",
            category="PathCLIP robustness",
        ),
    params:
        study=lambda wc: config["studies"]["pathclip"],
    log:
        f"{RESULTS}/logs/figures/pathclip_robustness.log",
    script:
        "../scripts/figure_pathclip_robustness.py"


rule figure_corruption_gallery:
    input:
        images=lambda wc: dataset_files(config["studies"]["pathclip"]["datasets"][0])["images"],
    output:
        report(
            f"{RESULTS}/figures/corruption_gallery.png",
            caption="../report/corruption_gallery.rst",
            category="PathCLIP robustness",
        ),
    params:
        conditions=lambda wc: config["studies"]["pathclip"]["conditions"],
    log:
        f"{RESULTS}/logs/figures/corruption_gallery.log",
    script:
        "../scripts/figure_corruption_gallery.py"
