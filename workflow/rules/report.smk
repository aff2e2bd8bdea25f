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
        [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md")],
    params:
        studies=config["studies"],
        folder=f"{RESULTS}/tables",
    log:
        f"{RESULTS}/logs/tables.log",
    script:
        "../scripts/tables.py"


rule figures:
    input:
        metrics=f"{RESULTS}/metrics.csv",
    output:
        accuracy=report(
            f"{RESULTS}/figures/clipath_accuracy.png",
            caption="../report/clipath_accuracy.rst",
            category="CLIPath",
        ),
    params:
        studies=config["studies"],
    log:
        f"{RESULTS}/logs/figures.log",
    script:
        "../scripts/figures.py"
