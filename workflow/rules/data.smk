# Acquire a dataset and convert it once to the canonical store. The store's record of what
# it read (source.json) makes source_state a param: changed data rerun this job and what
# depends on it, a touched but identical tree does not (medtune.data.inventory). The record
# is not an output: Snakemake removes outputs before a job runs and evaluates its params
# again then, so the record must still be there for the job to get the value its DAG had.


rule prepare_dataset:
    output:
        images=f"{RESULTS}/data/{{dataset}}/images.npy",
        samples=f"{RESULTS}/data/{{dataset}}/samples.csv",
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        spec=lambda wc: data_sources.prepare_spec(DATASETS[wc.dataset]),
        progress=config["progress"],
        source_state=source_state,
    script:
        "../scripts/prepare_dataset.py"
