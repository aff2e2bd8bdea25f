# Stratified, nested, seeded training subsets (nested because every fraction and shot count
# takes a prefix of the same per-class permutation of its seed). The dataset's class_balance
# (proportional | equal) decides each class's share of a fraction; it is a setting of the
# dataset, so changing it redoes the subsets. Shots (k images of every class, the few-shot
# protocol) take the first k of each class's permutation whatever the balance.
# One job per dataset writes every seed x (fraction and shot count): a subset takes
# milliseconds, a job a second to start.

# every seed, fraction and shot count any dataset trains with (a dataset gets them all:
# a rule's outputs cannot depend on its wildcards, and unused subsets cost nothing)
SUBSET_SEEDS = sorted({s for d in DATASETS for s in plan.seeds_for(config, d)})
SUBSET_FRACTIONS = sorted({f for d in DATASETS for f in plan.fractions_for(config, d)}, key=float)
SUBSET_SHOTS = sorted({k for d in DATASETS for k in plan.shots_for(config, d)})
SUBSET_NAMES = [f"frac{f}" for f in SUBSET_FRACTIONS] + [f"shots{k}" for k in SUBSET_SHOTS]
SUBSETS = [(seed, name) for seed in SUBSET_SEEDS for name in SUBSET_NAMES]

if SUBSETS:

    rule subsample:
        input:
            samples=f"{RESULTS}/data/{{dataset}}/samples.csv",
        output:
            [f"{RESULTS}/subsets/{{dataset}}/seed{seed}/{name}.csv" for seed, name in SUBSETS],
        log:
            f"{RESULTS}/logs/subsample/{{dataset}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/subsample/{{dataset}}.tsv"
        conda:
            "../../envs/medtune.yaml"
        threads: 1
        resources:
            mem_mb=1000,
        params:
            subsets=SUBSETS,  # (seed, subset name) of each output, in order
            fractions=SUBSET_FRACTIONS,
            shots=SUBSET_SHOTS,
            class_balance=lambda wc: DATASETS[wc.dataset].get("class_balance", "proportional"),
        script:
            "../scripts/subsample.py"
