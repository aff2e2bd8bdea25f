# Adaptation methods, as their modules declare them (medtune.methods). Frozen-feature
# methods train from the cached features only, one job per seed covering every fraction and shot count,
# and evaluate in the same job: fitting a head on cached features takes about a second,
# less than starting Python and importing torch, so a job per fraction (or a separate
# evaluate job per run) would spend most of its time starting. Backbone-training methods
# (full fine-tuning) run one job per run.


rule train_frozen:
    input:
        unpack(trained_inputs),
    output:
        # every fraction and shot count of the seed: {frac{fraction},shots{k}}/{head.pt,train.json,metrics.csv,predictions.npz}, runs.json
        directory(f"{RESULTS}/runs/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}"),
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{trained}}/{{backbone}}/seed{{seed}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        # of the frozen methods, only those that run the text encoder use a GPU
        gpu=lambda wc: gpu_request(wc) if METHODS[wc.trained]["needs_text_encoder"] else 0,
    params:
        method=lambda wc: {
            "name": wc.trained,
            **{k: METHODS[wc.trained][k] for k in ("module", "params", "train_conditions", "needs_text_encoder")},
        },
        runs=lambda wc: [r.labels() for r in seed_runs(wc)],
        subset_names=lambda wc: [r.subset for r in seed_runs(wc)],
        logit_subsets=lambda wc: [r.subset for r in seed_runs(wc) if r.path in LOGIT_RUNS],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.trained),
        spec=lambda wc: BACKBONES[wc.backbone],
        # the class words of a method that runs the text encoder (CoOp); the others read the class
        # text features, if any, as an input, so a prompt change reruns only what uses prompts
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"] if METHODS[wc.trained]["needs_text_encoder"] else {},
        class_balance=lambda wc: DATASETS[wc.dataset].get("class_balance", "proportional"),  # reruns on a change: the subsets are ancient inputs
        device=config["device"],
        progress=config["progress"],
    script:
        "../scripts/train_frozen.py"


rule train_backbone:
    input:
        unpack(tuned_inputs),
    output:
        weights=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/weights.pt",
        head=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/head.pt",
        record=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/train.json",
        metrics=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/metrics.csv",
        predictions=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/predictions.npz",
        manifest=f"{RESULTS}/runs/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{tuned}}/{{backbone}}/seed{{seed}}/{{subset}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: config["model_cores"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_request,
    params:
        torch_threads=config["model_threads"],
        method=lambda wc: {"name": wc.tuned, **{k: METHODS[wc.tuned][k] for k in ("module", "params")}},
        run=lambda wc: backbone_run(wc).labels(),
        spec=lambda wc: BACKBONES[wc.backbone],
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.tuned),
        class_balance=lambda wc: DATASETS[wc.dataset].get("class_balance", "proportional"),  # reruns on a change: the subset is an ancient input
        device=config["device"],
        progress=config["progress"],
        # resumable state lives outside the outputs so a killed job can continue
        state_dir=lambda wc: f"{RESULTS}/resume/{backbone_run(wc).path}",
    script:
        "../scripts/train_backbone.py"


# A transductive stage (TransCLIP) refines the test predictions of another method's runs: one job
# per seed of the base (or the one run of a base without training data), every subset in it, like
# the frozen fits; its heads run the base's head, then the stage, over each condition's test split.
rule train_transductive:
    input:
        unpack(stage_inputs),
    output:
        # {frac{fraction},shots{k}}/{head.pt,train.json,metrics.csv,predictions.npz}, runs.json; on zero-shot those files directly
        directory(f"{RESULTS}/runs/{{dataset}}/{{staged}}/{{backbone}}/{{setting}}"),
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{staged}}/{{backbone}}/{{setting}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{staged}}/{{backbone}}/{{setting}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        # the stage's settings but its "methods": adding one reruns no existing run of another
        method=lambda wc: stage_method(wc.staged),
        runs=lambda wc: [r.labels() for r in stage_runs(wc)],
        subset_names=lambda wc: [r.subset if r.seed is not None else "" for r in stage_runs(wc)],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, plan.stage_of(config, wc.staged)[1]),
        class_balance=lambda wc: DATASETS[wc.dataset].get("class_balance", "proportional"),  # reruns on a change: the subsets are ancient inputs
        progress=config["progress"],
    script:
        "../scripts/train_frozen.py"


# A model soup averages the weights of other backbone-trained runs (its ingredients: the runs of
# the methods its ``methods`` names, on the same seed and subset) and evaluates the average as
# train_backbone evaluates a run: the test split re-encoded under every condition.
rule train_soup:
    input:
        unpack(soup_inputs),
    output:
        weights=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/weights.pt",
        head=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/head.pt",
        record=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/train.json",
        metrics=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/metrics.csv",
        predictions=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/predictions.npz",
        manifest=f"{RESULTS}/runs/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{souped}}/{{backbone}}/seed{{seed}}/{{subset}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: config["model_cores"]
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_request,
    params:
        torch_threads=config["model_threads"],
        method=lambda wc: {"name": wc.souped, **{k: METHODS[wc.souped][k] for k in ("module", "params")}},
        ingredient_module=lambda wc: METHODS[METHODS[wc.souped]["params"]["methods"][0]]["module"],
        run=lambda wc: soup_run(wc).labels(),
        spec=lambda wc: BACKBONES[wc.backbone],
        prompts=lambda wc: DATASETS[wc.dataset]["prompts"],
        conditions=lambda wc: plan.conditions_for(config, wc.dataset, wc.backbone, wc.souped),
        device=config["device"],
        progress=config["progress"],
    script:
        "../scripts/train_soup.py"
