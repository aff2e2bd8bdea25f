# Stratified, nested, seeded training subsets (nested because every fraction takes
# a prefix of the same per-class permutation of its seed). The dataset's class_balance
# (proportional | equal) decides each class's share; it is a setting of the dataset, so
# there is one subset per dataset x seed x fraction and changing it redoes the subsets.


rule subsample:
    input:
        samples=f"{RESULTS}/data/{{dataset}}/samples.csv",
    output:
        f"{RESULTS}/subsets/{{dataset}}/seed{{seed}}/frac{{fraction}}.csv",
    params:
        class_balance=lambda wc: DATASETS[wc.dataset].get("class_balance", "proportional"),
    log:
        f"{RESULTS}/logs/subsample/{{dataset}}/seed{{seed}}/frac{{fraction}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/subsample.py"


rule subsample_shots:
    # k images of every class (the few-shot protocol), prefixes of the same permutations
    input:
        samples=f"{RESULTS}/data/{{dataset}}/samples.csv",
    output:
        f"{RESULTS}/subsets/{{dataset}}/seed{{seed}}/shots{{shots}}.csv",
    log:
        f"{RESULTS}/logs/subsample/{{dataset}}/seed{{seed}}/shots{{shots}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/subsample_shots.py"
