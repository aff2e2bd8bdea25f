# Zero-shot: the pretrained model's class-prompt classifier, evaluated under every test
# condition its dataset x backbone needs, in one job (the head is a copy of the text
# features, so a job of its own would be all start-up), with its own image embedding's
# retrieval and invariance; a backbone without a text tower gets those alone. Trained
# methods evaluate inside their training job (train.smk).


rule zeroshot:
    input:
        unpack(zeroshot_inputs),
    output:
        head=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/head.pt",
        metrics=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/metrics.csv",
        # and predictions.npz beside them where the backbone has a text tower (the manifest lists it)
        manifest=f"{RESULTS}/runs/{{dataset}}/zeroshot/{{backbone}}/pretrained/{MANIFEST}",
    log:
        f"{RESULTS}/logs/zeroshot/{{dataset}}/{{backbone}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/zeroshot/{{dataset}}/{{backbone}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, "zeroshot"),
        run=lambda wc: plan.Run(wc.dataset, "zeroshot", wc.backbone).labels(),
    script:
        "../scripts/zeroshot.py"
