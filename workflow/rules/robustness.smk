# Robustness beyond corruptions: PGD attacks on trained heads with the backbone in the loop
# (the adversarial study) and each backbone's centre-shift robustness index (the centre_shift
# study). The conformal study and the centre-shift accuracy table read the logits the
# evaluation jobs keep (LOGIT_RUNS); they need no job of their own.
# Their input functions live in common.smk.


wildcard_constraints:
    attacked=one_of(ADVERSARIAL["methods"] if ADVERSARIAL else []),
    protocol=one_of(ADVERSARIAL["attacks"] if ADVERSARIAL else []),


rule attack:
    input:
        **dataset_files("{dataset}"),
        runs=lambda wc: all_run_outputs(attacked_runs(wc)),
        weights=lambda wc: backbone_weights(wc.backbone),
    output:
        # {seed{seed}/{subset} or pretrained}/metrics.csv per run, runs.json
        directory(f"{RESULTS}/attacks/{{dataset}}/{{attacked}}/{{backbone}}/{{protocol}}"),
    log:
        f"{RESULTS}/logs/attack/{{dataset}}/{{attacked}}/{{backbone}}/{{protocol}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attack/{{dataset}}/{{attacked}}/{{backbone}}/{{protocol}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: config["model_cores"]
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=gpu_request,
    params:
        torch_threads=config["model_threads"],
        runs=lambda wc: [r.labels() for r in attacked_runs(wc)],
        settings=lambda wc: ADVERSARIAL["attacks"][wc.protocol],
        images=lambda wc: ADVERSARIAL["attack_images"],
        batch_size=lambda wc: ADVERSARIAL["attack_batch_size"],
        spec=lambda wc: BACKBONES[wc.backbone],
        device=config["device"],
    script:
        "../scripts/attack.py"


rule robustness_index:
    input:
        features=lambda wc: features_dir(wc.backbone, wc.dataset, CENTRE_SHIFT["index_split"]),
        samples=lambda wc: dataset_files(wc.dataset)["samples"],
    output:
        f"{RESULTS}/robustness_index/{{dataset}}/{{backbone}}.json",
    log:
        f"{RESULTS}/logs/robustness_index/{{dataset}}/{{backbone}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/robustness_index/{{dataset}}/{{backbone}}.tsv"
    conda:
        "../../envs/medtune.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        split=lambda wc: CENTRE_SHIFT["index_split"],
        settings=lambda wc: {k: CENTRE_SHIFT[k] for k in ("k_max", "bootstrap", "index_images_per_cell", "index_seed")},
    script:
        "../scripts/robustness_index.py"
