# Metrics of a pretrained model's head (zero-shot) under every test condition its dataset x
# backbone needs. Frozen-feature methods evaluate inside their training job (train.smk).


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/runs/{{dataset}}/{{method}}/{{backbone}}/{{setting}}/metrics.csv",
    params:
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.method),
        run=lambda wc: {
            "dataset": wc.dataset,
            "method": wc.method,
            "backbone": wc.backbone,
            "setting": wc.setting,
        },
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{method}}/{{backbone}}/{{setting}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/evaluate.py"
