# Zero-shot: the pretrained model's class-prompt classifier, evaluated under every test
# condition its dataset x backbone needs, in one job (the head is a copy of the text
# features, so a job of its own would be all start-up). Frozen-feature methods evaluate
# inside their training job (train.smk).


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        head=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/head.pt",
        metrics=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/metrics.csv",
    params:
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, "zeroshot"),
        run=lambda wc: {
            "dataset": wc.dataset,
            "method": "zeroshot",
            "backbone": wc.backbone,
            "setting": "pretrained",
        },
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/zeroshot/{{backbone}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{dataset}}/zeroshot/{{backbone}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/evaluate.py"
