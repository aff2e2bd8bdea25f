# Acquire a dataset and convert it once to the canonical store.


rule prepare_dataset:
    output:
        images=f"{RESULTS}/data/{{dataset}}/images.npy",
        samples=f"{RESULTS}/data/{{dataset}}/samples.csv",
    params:
        spec=lambda wc: data_sources.prepare_spec(DATASETS[wc.dataset]),
        progress=config["progress"],
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/prepare_dataset.py"
