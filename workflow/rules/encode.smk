# Backbones: the pipeline's own pretraining of the tiny default, then encode-once
# image features (every condition a split needs) and class-prompt text features.


rule pretrain_backbone:
    input:
        unpack(pretrain_inputs),
    output:
        weights=f"{RESULTS}/backbones/{{backbone}}/weights.pt",
        record=f"{RESULTS}/backbones/{{backbone}}/pretrain.json",
    log:
        f"{RESULTS}/logs/pretrain_backbone/{{backbone}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_backbone/{{backbone}}.tsv"
    # every model job waits for the backbone: start it before the many small subset jobs
    priority: 20
    conda:
        "../../envs/medtune.yaml"
    threads: config["model_cores"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    params:
        torch_threads=config["model_threads"],
        spec=lambda wc: BACKBONES[wc.backbone],
        device=config["device"],
        progress=config["progress"],
        # resumable state lives outside the outputs so a killed job can continue
        state=lambda wc: f"{RESULTS}/backbones/{wc.backbone}/resume_state.pt",
    script:
        "../scripts/pretrain_backbone.py"


rule encode_images:
    input:
        unpack(encode_inputs),
    output:
        directory(f"{RESULTS}/features/{{backbone}}/{{dataset}}/{{split}}"),
    log:
        f"{RESULTS}/logs/encode_images/{{backbone}}/{{dataset}}/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/encode_images/{{backbone}}/{{dataset}}/{{split}}.tsv"
    # the training and evaluation jobs wait for these features; fine-tuning does not
    priority: 10
    conda:
        "../../envs/medtune.yaml"
    threads: config["model_cores"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    params:
        torch_threads=config["model_threads"],
        spec=lambda wc: BACKBONES[wc.backbone],
        conditions=split_conditions,
        device=config["device"],
        progress=config["progress"],
    script:
        "../scripts/encode_images.py"


rule encode_text:
    input:
        unpack(encode_inputs),
    output:
        f"{RESULTS}/features/{{backbone}}/{{dataset}}/text.npz",
    log:
        f"{RESULTS}/logs/encode_text/{{backbone}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/encode_text/{{backbone}}/{{dataset}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        spec=lambda wc: BACKBONES[wc.backbone],
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"],
        device=config["device"],
    script:
        "../scripts/encode_text.py"
