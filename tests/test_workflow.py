"""The whole DAG on a small synthetic config: tables, incremental re-runs, determinism."""

import copy
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import SMALL_CONFIG, job_counts, snakemake, write_config

N_CLASSES = len(SMALL_CONFIG["datasets"]["synth"]["classes"])  # the small config keeps a few tissues


def test_tables_have_the_seed_shapes(small_run):
    tables = small_run / "results" / "tables"
    acc = pd.read_csv(tables / "clipath_accuracy.csv")
    rows = set(zip(acc["method"], acc["fraction"], acc["shots"]))
    methods = ("linear_probe", "knn", "simpleshot", "rfc", "clip_adapter", "tip_adapter", "tip_adapter_f", "coop", "rfc_augmented", "clip_lora",
               "toy_method", "linear_probe_aug_medmnistc", "lp_plus_plus", "clap", "linear_probe+transclip", "tip_adapter+transclip")
    trained = {(m, f, 0) for m in methods for f in (5.0, 50.0)} | {(m, 0.0, 2) for m in methods}
    # TransCLIP, declared once, refines zero-shot (one run) and both few-shot methods at every usage
    assert rows == {("zeroshot", 0.0, 0), ("zeroshot+transclip", 0.0, 0)} | trained
    # rows in the methods' declared order (a variant right after its base, a stage on a method with it), the toy method
    # (registered from tests/) last
    assert list(dict.fromkeys(acc["method"])) == [
        "zeroshot", "zeroshot+transclip", "linear_probe", "linear_probe+transclip", "linear_probe_aug_medmnistc", "lp_plus_plus", "clap", "knn",
        "simpleshot", "rfc", "rfc_augmented", "clip_adapter", "tip_adapter", "tip_adapter+transclip", "tip_adapter_f", "coop", "clip_lora",
        "toy_method",
    ]
    assert "| linear probe + TransCLIP − zero-shot " in (tables / "clipath_significance.md").read_text()
    # within a method: the shot counts, then the fractions; the data usage says which
    md = (tables / "clipath_accuracy.md").read_text()
    assert md.count("| 2-shot ") == len(methods) and md.count("| 50% ") == len(methods)
    assert acc.loc[acc["method"] == "knn", ["fraction", "shots"]].values.tolist() == [[0.0, 2], [5.0, 0], [50.0, 0]]
    for metric in ("accuracy", "recall", "precision", "f1", "auc"):
        assert acc[f"{metric}_mean"].between(0, 1).all()
    # two seeds -> a confidence interval for every trained row
    assert acc.loc[~acc["method"].isin(["zeroshot", "zeroshot+transclip"]), "accuracy_ci95"].notna().all()

    cost = pd.read_csv(tables / "clipath_cost.csv")
    # TransCLIP on zero-shot records what it fits to the test set, without training data
    assert cost.loc[cost["method"] == "zeroshot+transclip", "trainable_parameters"].item() == N_CLASSES * 64 + 64
    trained = cost[~cost["method"].isin(["zeroshot", "zeroshot+transclip", "toy_method"])]
    # the training-free ones (kNN, SimpleShot) may round to 0 s on a few images; every other fit takes time
    free = trained["method"].isin(["knn", "simpleshot", "tip_adapter"])
    assert (trained["train_seconds_mean"] >= 0).all() and (trained.loc[~free, "train_seconds_mean"] > 0).all()
    assert len(trained) == 3 * (len(methods) - 1)
    # what each method trains: nothing for kNN, SimpleShot and the training-free Tip-Adapter
    learned = trained.groupby("method")["trainable_parameters"].min()
    assert (learned[["knn", "simpleshot", "tip_adapter"]] == 0).all()
    assert (learned.drop(["knn", "simpleshot", "tip_adapter"]) > 0).all()
    # CLIP-LoRA trains its rank-2 q, k, v updates of the tiny model's 2 + 2 attention layers (width 96 and 64),
    # merged away by the time the run is evaluated
    assert learned["clip_lora"] == 2 * 3 * (2 * 2 * 96) + 2 * 3 * (2 * 2 * 64)
    lora = cost[cost["method"] == "clip_lora"].set_index(["fraction", "shots"])
    assert lora.loc[(50.0, 0), "images_seen"] == 4 * 16 and lora.loc[(0.0, 2), "images_seen"] == 2 * (2 * N_CLASSES)  # 4 steps x 16; 2 steps x the 2-shot subset
    toy = cost[cost["method"] == "toy_method"]  # class means: faster than the clock's millisecond
    assert (toy["train_seconds_mean"] >= 0).all() and (toy["trainable_parameters"] == N_CLASSES * 64).all()

    topk = pd.read_csv(tables / "pubmedvision_topk.csv")
    assert topk["group"].iloc[0] == "all" and len(topk) == 1 + 3  # overall + three organ groups
    for model in ("zeroshot", "finetune_caption", "finetune_label", "finetune_label+wise0.5", "clip_lora", "lp_ft", "soup", "soup_uniform"):
        assert {f"tiny/{model}/top1", f"tiny/{model}/top3"} <= set(topk.columns)
    # the soups' records: their ingredients, the greedy steps, and a cost that includes the ingredients' training
    runs = small_run / "results" / "runs" / "synth"
    greedy = yaml.safe_load((runs / "soup" / "tiny" / "seed1" / "frac50" / "train.json").read_text())
    uniform = yaml.safe_load((runs / "soup_uniform" / "tiny" / "seed1" / "frac50" / "train.json").read_text())
    assert greedy["chosen"]["ingredients"] == uniform["chosen"]["kept"] == ["finetune_caption", "finetune_label"]
    assert greedy["chosen"]["kept"][0] == max(greedy["chosen"]["ingredient_val_accuracy"].items(), key=lambda kv: kv[1])[0]
    assert greedy["wall_seconds"] > greedy["chosen"]["ingredient_seconds"] > 0
    lp_ft = yaml.safe_load((runs / "lp_ft" / "tiny" / "seed1" / "frac50" / "train.json").read_text())
    assert lp_ft["chosen"]["chosen_val_accuracy"] >= lp_ft["chosen"]["probe_val_accuracy"]

    zs = pd.read_csv(tables / "pathclip_zeroshot.csv")
    assert zs["condition"].tolist() == ["clean", "blur-2", "hue--2", "markup-1"]
    assert zs["corruption"].tolist() == ["Origin", "Blur", "Hue", "Markup"]
    assert zs["severity"].tolist() == [0, 2, -2, 1]
    assert {"synth/tiny/accuracy", "synth/tiny/f1", "synth/tiny-untrained/accuracy"} <= set(zs.columns)
    retrieval = pd.read_csv(tables / "pathclip_retrieval.csv")
    assert {"synth/tiny/ha@5", "synth/tiny/ha@10"} <= set(retrieval.columns)
    assert retrieval["synth/tiny/ha@5"].between(0, 1).all()
    # a contrastively pretrained backbone retrieves better than an untrained one on clean images
    clean = retrieval.set_index("condition").loc["clean"]
    assert clean["synth/tiny/ha@5"] > clean["synth/tiny-untrained/ha@5"]
    assert (tables / "clipath_accuracy.md").read_text().startswith("### CLIPath")
    robust = pd.read_csv(tables / "adapted_robustness.csv")
    assert list(robust.columns[3:]) == ["trained on", "clean", "blur-2", "motion_blur-2", "mean pathclip", "mean medmnistc"]
    assert {"rfc@5%", "rfc@50%", "coop@50%", "rfc_augmented@50%", "zeroshot", "knn@2-shot", "tip_adapter_f@50%", "clip_lora@50%",
            "clip_lora@2-shot"} <= set(robust["model"])
    trained_on = dict(zip(robust["model"], robust["trained on"]))
    assert trained_on["linear_probe_aug_medmnistc@50%"] == "medmnistc" and trained_on["rfc_augmented@50%"] == "pathclip"
    assert trained_on["linear_probe@50%"] == "clean" and trained_on["linear_probe_aug_medmnistc@2-shot"] == "medmnistc"
    assert trained_on["zeroshot"] == "–" and trained_on["clip_lora@50%"] == "clean"
    summary = pd.read_csv(tables / "medmnistc_summary.csv")
    assert set(summary["backbone"]) == {"tiny", "tiny-vit", "tiny-untrained"} and list(summary.columns[5:10]) == [
        "clean", "jpeg_compression", "hed_shift", "mean_corrupted", "be"
    ]
    assert summary.set_index("backbone").loc["tiny-untrained", "be"] == 1  # the default reference: the last backbone
    # the vision-only backbone has no zero-shot errors: its row is "—", and why
    assert summary.set_index("backbone").loc["tiny-vit", "not_run"].startswith("zeroshot requires a text tower")
    invariance = pd.read_csv(tables / "embedding_invariance.csv")
    assert list(invariance["condition"]) == ["jpeg_compression-3", "hed_shift-4", "blur-2", "mean pathclip", "mean medmnistc"]
    # ... but it has its own embedding, whose invariance is measured like the others'
    assert invariance[["synth/tiny", "synth/tiny-vit", "synth/tiny-untrained"]].stack().between(-1, 1).all()
    figures = small_run / "results" / "figures"
    for figure in ("clipath_accuracy", "clipath_shots", "clipath_training_time", "clipath_confusion", "clipath_reliability", "pubmedvision_groups",
                   "pathclip_robustness", "corruption_gallery", "retrieval_examples", "medmnistc_gallery", "embedding_invariance",
                   "leaderboard"):
        assert (figures / f"{figure}.png").stat().st_size > 10_000
        assert (figures / f"{figure}.pdf").read_bytes().startswith(b"%PDF")


def test_significance_table_pairs_every_method(small_run):
    tables = small_run / "results" / "tables"
    sig = pd.read_csv(tables / "clipath_significance.csv")
    from medtune import plan

    config = plan.validate(SMALL_CONFIG)
    declared = config["methods"]
    study = config["studies"]["clipath"]
    # every method's runs, a stage's refined runs of its bases among them
    names = {r.method for r in plan.runs(config) if r.method.split("+")[0] in study["methods"]}
    methods = sorted(names, key=lambda m: (declared[m.split("+")[0]]["order"], m))
    assert {"zeroshot+transclip", "linear_probe+transclip", "tip_adapter+transclip", "lp_plus_plus", "clap"} <= names
    pairs = {(m, r) for i, r in enumerate(methods) for m in methods[i + 1:]}  # each later method against each earlier one
    pairs.discard(("zeroshot+transclip", "zeroshot"))  # neither has training data: no seeds or usages to pair on
    assert set(zip(sig["method"], sig["reference"])) == pairs
    usages = sig["fraction"].notna() | sig["shots"].notna()
    per_usage, per_pair = sig[usages], sig[~usages]
    # a row per pair at each fraction (5, 50) and shot count (2)
    assert len(per_usage) == 3 * len(pairs) and len(per_pair) == len(pairs)
    assert sorted(per_usage["shots"].dropna().unique()) == [2] and sorted(per_usage["fraction"].dropna().unique()) == [5, 50]
    assert (per_usage["n_seeds"] == 2).all() and (per_pair["n_pairs"] == 6).all()  # 2 seeds x (2 fractions + 1 shot count)
    # every run saved its predictions: a bootstrap interval around each difference
    assert per_usage[["boot_accuracy_low", "boot_accuracy_high", "p_boot_accuracy", "p_boot_auc"]].notna().all().all()
    assert (per_usage["boot_accuracy_low"] <= per_usage["boot_accuracy_high"]).all()
    for column in ("p_t", "p_boot_accuracy", "p_boot_auc", "p_wilcoxon"):
        p, adjusted = sig[column].dropna(), sig[f"{column}_holm"].dropna()
        assert p.between(0, 1).all() and len(adjusted) == len(p) and (adjusted >= p - 1e-12).all()
    assert per_pair["p_wilcoxon"].notna().all()
    md = (tables / "clipath_significance.md").read_text()
    assert md.startswith("### CLIPath") and "Holm" in md
    acc = pd.read_csv(tables / "clipath_accuracy.csv")
    assert acc["beats_zeroshot"].dtype == bool and acc["beats_best_baseline"].dtype == bool
    assert "† better than zero-shot" in (tables / "clipath_accuracy.md").read_text()


def test_metrics_are_tidy(small_run):
    metrics = pd.read_csv(small_run / "results" / "metrics.csv")
    assert list(metrics.columns) == ["dataset", "method", "backbone", "seed", "fraction", "shots", "condition", "group", "metric", "value"]
    trained = metrics[metrics["method"] == "rfc"]
    assert sorted(trained["seed"].unique()) == [1, 2]
    assert not metrics.duplicated(["dataset", "method", "backbone", "seed", "fraction", "shots", "condition", "group", "metric"]).any()
    # a run on shots has no fraction and the others no shots
    few = metrics[metrics["shots"].notna()]
    assert set(few["shots"]) == {2} and few["fraction"].isna().all() and set(few["seed"]) == {1, 2}
    assert set(metrics.loc[metrics["fraction"].notna(), "shots"].isna()) == {True}
    # balanced accuracy and calibration for every run under every condition; the vision-only backbone's
    # zero-shot run has its embedding's retrieval and invariance alone
    embedding_only = (metrics["method"] == "zeroshot") & (metrics["backbone"] == "tiny-vit")
    assert set(metrics.loc[embedding_only, "metric"]) == {"ha@5", "ha@10", "p@5", "p@10", "cosine_to_clean"}
    metrics = metrics[~embedding_only]
    overall = metrics[metrics["group"] == "all"]
    per_run = overall.groupby(["dataset", "method", "backbone", "seed", "fraction", "shots", "condition"], dropna=False)["metric"].apply(set)
    assert per_run.map(lambda found: {"balanced_accuracy", "ece15", "ece5"} <= found).all()
    assert overall[overall["metric"].isin(["balanced_accuracy", "ece15", "ece5"])]["value"].between(0, 1).all()


def test_shot_subsets_hold_k_images_of_every_class(small_run):
    subsets = small_run / "results" / "subsets" / "synth"
    for seed in (1, 2):
        shots = pd.read_csv(subsets / f"seed{seed}" / "shots2.csv")
        assert shots["label"].value_counts().tolist() == [2] * N_CLASSES
        # the same permutations as the fractions: the 2-shot subset lies inside the 50 % one
        assert set(shots["index"]) <= set(pd.read_csv(subsets / f"seed{seed}" / "frac50.csv")["index"])
    record = small_run / "results" / "runs" / "synth" / "knn" / "tiny" / "seed1" / "shots2" / "train.json"
    labels = yaml.safe_load(record.read_text())
    assert (labels["shots"], labels["fraction"], labels["n_train"]) == (2, None, 2 * N_CLASSES)


def test_every_run_lists_its_clean_test_predictions(small_run):
    import numpy as np

    from medtune.records import read_runs

    runs = small_run / "results" / "runs"
    manifests = sorted(runs.glob("**/runs.json"))
    found = read_runs(manifests)
    assert {r["method"] for r in found} >= {"zeroshot", "rfc", "finetune_label"}
    # but a zero-shot run without a text tower, which has no classifier
    assert [(r["method"], r["backbone"]) for r in found if "predictions" not in r["files"]] == [("zeroshot", "tiny-vit")]
    found = [r for r in found if "predictions" in r["files"]]
    samples = pd.read_csv(small_run / "results" / "data" / "synth" / "samples.csv").query("split == 'test'")
    for run in found:
        saved = np.load(run["files"]["predictions"])
        assert saved["logits"].shape[0] == len(samples)
        assert (saved["index"] == samples["index"].to_numpy()).all() and (saved["labels"] == samples["label"].to_numpy()).all()


def test_rerun_has_nothing_to_do(small_run):
    result = snakemake(small_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_hyperparameter_reruns_only_that_method(small_run):
    config = copy.deepcopy(SMALL_CONFIG)
    config["methods"]["rfc"]["epochs"] = 4
    (small_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        counts = job_counts(snakemake(small_run, "-n").stdout)
    finally:
        write_config(small_run, SMALL_CONFIG)
    assert counts.pop("train_frozen") == 4  # rfc and rfc_augmented, one job per seed (2) covering both fractions
    # the tables and the figures: one job per study, every study with a figure made from metrics, costs or runs
    # (not those of images or features alone)
    assert {rule: counts.pop(rule) for rule in [r for r in counts if r.startswith("figures_")]} == dict.fromkeys(
        [f"figures_{s}" for s in ("clipath", "medmnistc", "pathclip", "pubmedvision", "adversarial", "conformal", "leaderboard")], 1)
    assert set(counts) == {"collect_metrics", "tables", "all", "total"}


def test_adding_a_fraction_retrains_no_finished_backbone_run(small_run):
    """The one subsample job rewrites every subset when a fraction is added; the finished
    fine-tuning runs (pubmedvision, 50 %) keep theirs, whose contents did not change."""
    config = copy.deepcopy(SMALL_CONFIG)
    config["studies"]["clipath"]["fractions"] = [5, 10, 50]
    (small_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        plan = snakemake(small_run, "-n").stdout
    finally:
        write_config(small_run, SMALL_CONFIG)
    counts = job_counts(plan)
    assert counts["subsample"] == 1
    # the backbone-trained runs planned are the new 10 % ones (CLIP-LoRA's), none of 5 % or 50 %
    tuned = [line for line in plan.splitlines() if "tuned=" in line]
    assert len(tuned) == counts.get("train_backbone", 0) and all("subset=frac10," in line or line.endswith("subset=frac10") for line in tuned)
    # every clipath method trained on features refits its seeds, which now hold a 10 % run
    assert counts["train_frozen"] > 0


def test_bad_config_stops_with_one_line(tmp_path):
    config = copy.deepcopy(SMALL_CONFIG)
    config["methods"]["rfc"]["alphas"] = [2.0]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "medtune: config key methods.rfc.alphas.0: 2.0 is greater than the maximum of 1" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def report(small_run):
    path = small_run / "report.html"
    snakemake(small_run, "--report", str(path))
    return path


def test_report_embeds_every_table_and_figure(report):
    html = report.read_text(errors="replace")
    for name in ("clipath_accuracy.png", "clipath_confusion.png", "clipath_reliability.png", "clipath_significance.md", "pubmedvision_groups.png",
                 "pathclip_robustness.png", "corruption_gallery.png", "retrieval_examples.png", "clipath_accuracy.md", "pathclip_retrieval.md",
                 "medmnistc_gallery.png", "embedding_invariance.png", "medmnistc_summary.md", "adversarial_accuracy.png",
                 "robustness_index.png", "conformal_coverage.png", "conformal_coverage.md", "centre_shift_accuracy.md",
                 "leaderboard.md", "leaderboard.png"):
        assert name in html, name
    assert report.stat().st_size > 100_000


def test_report_opens_in_a_headless_browser_with_a_category_per_study(report, tmp_path):
    """The report is a page that builds itself with JavaScript: load it in a real browser and
    read what it rendered (scripts and styles removed), not the HTML file's embedded data."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    result = subprocess.run(
        [browser, *flags, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=300,
    )
    rendered = re.sub(r"<(script|style)\b.*?</\1>", "", result.stdout, flags=re.S)
    for category in ("CLIPath", "PubMedVision", "PathCLIP robustness", "MedMNIST-C robustness", "Robustness beyond corruptions",
                     "Leaderboard", "Tables", "Workflow"):
        assert f">{category}<" in rendered, category


def _draw_class(folder, n: int, shade: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (20, 20), (shade, 9 * i, 255 - shade)).save(folder / f"{i}.png")


def test_changed_data_rerun_their_preparation_and_a_touched_tree_does_not(tmp_path):
    """Recolour one class's image, add a class: the dataset's preparation reruns, and no other dataset's;
    touching every file, or copying the tree back in place, reruns nothing; after a rerun nothing is left
    to do. Only the stores are targets: this is the preparation rule, not another whole workflow."""
    import os

    from PIL import Image

    from medtune.data.store import load_dataset

    config = copy.deepcopy(SMALL_CONFIG)
    for name, shade in (("mine", 0), ("other", 90)):
        for c, cls in enumerate(("adipose", "mucus")):
            _draw_class(tmp_path / name / cls, 10, shade + 40 * c)
        config["datasets"][name] = {"source": "image_folder", "path": name, "image_size": 16}
    write_config(tmp_path, config)
    stores = ["results/data/mine/samples.csv", "results/data/other/samples.csv"]
    made = snakemake(tmp_path, *stores)
    assert job_counts(made.stdout + made.stderr)["prepare_dataset"] == 2
    nothing = "Nothing to be done"
    for path in (tmp_path / "mine").rglob("*.png"):  # touched: new times, same bytes
        os.utime(path)
    shutil.copytree(tmp_path / "mine", tmp_path / "copy")  # copied back: new inodes and times, same bytes
    shutil.rmtree(tmp_path / "mine")
    (tmp_path / "copy").rename(tmp_path / "mine")
    assert nothing in snakemake(tmp_path, "-n", *stores).stdout
    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "mine" / "adipose" / "3.png")  # recoloured
    plan = snakemake(tmp_path, "-n", *stores).stdout
    assert job_counts(plan) == {"prepare_dataset": 1, "total": 1} and "dataset=mine" in plan
    _draw_class(tmp_path / "mine" / "debris", 10, 170)  # a new class
    snakemake(tmp_path, *stores)
    assert load_dataset(tmp_path / "results/data/mine").class_names == ["adipose", "debris", "mucus"]
    assert nothing in snakemake(tmp_path, "-n", *stores).stdout
    latin1 = os.fsdecode(b"d\xe9bris")  # a class folder renamed by an old archive tool: named before any work
    (tmp_path / "mine" / "debris").rename(tmp_path / "mine" / latin1)
    result = snakemake(tmp_path, "-n", *stores, check=False)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("medtune")]
    # the skipped (method, backbone) pairs are said as the config is read, before the error
    assert [line for line in said if "tiny-vit" not in line] == [
        "medtune: datasets.mine: mine: the folder name b'd\\xe9bris' is not valid UTF-8; folder names become class "
        "names in samples.csv and the tables: rename it (e.g. convmv -f latin1 -t utf-8)"
    ]
