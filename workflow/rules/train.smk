# Adaptation methods. Frozen-backbone methods train from the cached features only, and
# evaluate in the same job: fitting a head on cached features takes seconds, less than
# a second interpreter start, so a separate evaluate job per run would double the cost.


rule zeroshot_head:
    input:
        text=f"{RESULTS}/features/{{backbone}}/{{dataset}}/text.npz",
    output:
        head=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/head.pt",
    log:
        f"{RESULTS}/logs/train/{{dataset}}/zeroshot/{{backbone}}.log",
    threads: 1
    script:
        "../scripts/zeroshot_head.py"


rule train_frozen:
    input:
        unpack(trained_inputs),
    output:
        head=f"{RESULTS}/runs/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/head.pt",
        record=f"{RESULTS}/runs/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/train.json",
        metrics=f"{RESULTS}/runs/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/metrics.csv",
    params:
        method=lambda wc: wc.trained,
        hyper=lambda wc: config["methods"][wc.trained],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone),
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}/frac{{fraction}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}/frac{{fraction}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../scripts/train_frozen.py"
