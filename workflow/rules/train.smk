# Adaptation methods. Frozen-backbone methods train from the cached features only, one job
# per seed covering every fraction, and evaluate in the same job: fitting a head on cached
# features takes about a second, less than starting Python and importing torch, so a job
# per fraction (or a separate evaluate job per run) would spend most of its time starting.


rule train_frozen:
    input:
        unpack(trained_inputs),
    output:
        # every fraction of the seed: frac{fraction}/{head.pt,train.json,metrics.csv}
        directory(f"{RESULTS}/runs/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}"),
    params:
        method=lambda wc: wc.trained,
        fractions=trained_fractions,
        hyper=lambda wc: config["methods"][plan.base_method(wc.trained)],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.trained),
        spec=lambda wc: BACKBONES[wc.backbone],
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"],
        device=config["device"],
        progress=config["progress"],
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        # only CoOp runs a network (the text encoder) while training
        gpu=lambda wc: gpu_request(wc) if wc.trained == "coop" else 0,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/train_frozen.py"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        weights=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/weights.pt",
        head=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/head.pt",
        record=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/train.json",
        metrics=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}/metrics.csv",
    params:
        hyper=lambda wc: config["methods"]["finetune"],
        spec=lambda wc: BACKBONES[wc.backbone],
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.tuned),
        device=config["device"],
        progress=config["progress"],
        # resumable state lives outside the outputs so a killed job can continue
        state_dir=lambda wc: f"{RESULTS}/resume/{wc.dataset}/{wc.tuned}/{wc.backbone}/seed{wc.seed}/frac{wc.fraction}",
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/frac{{fraction}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_request,
    conda:
        "../../envs/medtune.yaml"
    script:
        "../scripts/finetune.py"
