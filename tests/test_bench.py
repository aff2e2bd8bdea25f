"""Smoke test of the benchmark's measurements on tiny sizes (the targets are the bench's, not checked here)."""

import json
from pathlib import Path

import numpy as np
import pytest

from medtune.bench import cli, corrupt_throughput, encode_once, end_to_end, inputs, public_code, scaling, snakemake_cli

TEMPLATES = ["a histopathology image of {c}.", "an H&E stained patch of {c}."]


@pytest.fixture(scope="module")
def tiny():
    backbone = inputs.make_backbone("medtune-tiny", image_size=32)
    images, samples = inputs.make_data(n_train=20, n_val=10, n_test=6, image_size=32)
    return backbone, images, samples


def test_encode_once_times_both_paths(tiny):
    backbone, images, samples = tiny
    params = {
        "rfc": {"alphas": [0.5], "lr": 1e-3, "weight_decay": 0.0, "epochs": 1, "batch_size": 8, "hidden_widths": ["d/4", 64, "d/4"],
                "final_relu": True},
        "linear_probe": {"C_range": [1.0, 1.0], "steps_per_decade": 1, "search": "grid", "max_iter": 1000},
        "coop": {"n_ctx": 2, "epochs": 1, "batch_size": 4, "lr": 0.01},
    }
    r = encode_once.bench_encode_once(backbone, images, samples, [50], [1], params, TEMPLATES, batch_size=16, warmup=False)
    assert len(r["runs"]) == 3
    assert r["cached_images"] == 30
    assert r["naive_images"] == sum(v["naive_images"] for v in r["per_method"].values()) > 0
    assert r["cached_s"] > 0 and r["reencode_s"] > 0 and r["public_s"] > 0
    assert np.isfinite(r["ratio"]) and np.isfinite(r["ratio_reencode"])
    # both paths train the same models: at most one validation image flips on float noise
    assert r["max_val_accuracy_difference"] <= 0.1 + 1e-9
    fig = encode_once.encode_once_figure(r)
    assert fig.line().startswith("encode once") and fig.status in {"PASS", "MISS"}


def test_upstream_coop_text_encoder_gives_the_pipelines_prompt_features(tiny):
    """The public-code path runs CoOp's own text encoder over the whole context: the same features, more work."""
    import torch

    from medtune.methods.coop import PromptLearner

    backbone = tiny[0]
    learner = PromptLearner(backbone.model, backbone.tokenizer, ["tumor", "normal tissue"], n_ctx=3,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(public_code.upstream_prompt_features(backbone.model, learner), learner(backbone.model),
                                   atol=1e-5, rtol=0)


def test_corrupt_throughput_on_few_conditions(tiny):
    backbone, images, samples = tiny
    test_idx = np.array(samples.loc[samples["split"] == "test", "index"])
    r = corrupt_throughput.bench_corrupt_throughput(backbone, images, test_idx, ["clean", "blur-1", "markup-1"], batch_size=4, repeats=1)
    assert r["conditions"] == 3 and r["images"] == len(test_idx)
    assert set(r["per_condition_s"]) == {"clean", "blur-1", "markup-1"}
    assert r["full_s"] > 0 and r["bare_s"] > 0 and r["ratio"] > 0
    assert corrupt_throughput.corrupt_figure(r).status in {"PASS", "MISS"}


def test_job_count_parses_dry_run_output():
    stats = "Job stats:\njob      count\n-----  -------\nall        1\ntrain     12\ntotal     13\n\nReasons:"
    assert snakemake_cli.job_count(stats) == 13
    assert snakemake_cli.job_count("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).") == 0
    assert snakemake_cli.job_count("Error") is None
    reasons = ("total 3\n\nReasons:\n    (check individual jobs above for details)\n    params have changed since last execution:\n"
               "        encode_images\n    output files have to be generated:\n        train_frozen, tables\n"
               "This was a dry-run (flag -n).")
    assert snakemake_cli.dry_run_reasons(reasons) == {"params have changed since last execution": "encode_images",
                                              "output files have to be generated": "train_frozen, tables"}


def _fake_run(workdir: Path) -> Path:
    results = workdir / "results"
    for method, seconds, job_s in (("rfc", (3.0, 3.5), 9.0), ("linear_probe", (2.0, 2.2), 6.0)):
        tsv = results / "benchmarks" / "train" / "synthetic" / method / "tiny" / "seed1.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(f"s\th:m:s\tmax_rss\n{job_s}\t0:00:0{int(job_s)}\t300.0\n")
        for fraction, s, n in (("0.1", seconds[0], 5), ("50", seconds[1], 500)):
            record = results / "runs" / "synthetic" / method / "tiny" / "seed1" / f"frac{fraction}" / "train.json"
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"dataset": "synthetic", "method": method, "backbone": "tiny", "seed": 1,
                                          "fraction": float(fraction), "n_train": n, "wall_seconds": s}))
    prep = results / "benchmarks" / "prepare_dataset" / "synthetic.tsv"
    prep.parent.mkdir(parents=True)
    prep.write_text("s\th:m:s\tmax_rss\n10.0\t0:00:10\t200.0\n")
    log = workdir / ".snakemake" / "log" / "2026-01-01T000000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("[Mon Nov 23 18:24:40 2026]\nlocalrule a:\n1 of 2 steps (50%) done\n"
                   "[Mon Nov  23 18:30:10 2026]\n2 of 2 steps (100%) done\nComplete log(s): x\n")
    return results


def test_end_to_end_and_scaling_from_benchmark_files(tmp_path):
    results = _fake_run(tmp_path)
    e2e = end_to_end.bench_end_to_end(results, tmp_path, import_repeats=1,
                                      imports=dict.fromkeys(end_to_end.STARTUP_IMPORTS, "import json"))
    assert e2e["benchmark_files"] == 3
    assert e2e["job_seconds"] == pytest.approx(9.0 + 6.0 + 10.0)
    assert e2e["per_rule"]["train"]["jobs"] == 2
    assert e2e["last_complete_run"]["wall_s"] == 330
    assert e2e["jobs_by_kind"] == {"data": 1, "frozen fit: linear_probe": 1, "frozen fit: rfc": 1}
    assert all(s > 0 for s in e2e["import_s"].values())
    assert end_to_end.end_to_end_figure(e2e).value == 330
    # startup share: one fresh interpreter + imports per job, by kind, over the summed job seconds (worked by hand)
    by_hand = sum(e2e["import_s"].values()) / (9.0 + 6.0 + 10.0)
    assert e2e["startup_share"] == pytest.approx(by_hand)
    assert end_to_end.end_to_end_figure(e2e).to_json()["startup_share"] == pytest.approx(by_hand)

    result = scaling.bench_scaling(results)
    by_method = {s["method"]: s for s in result["summary"]}
    assert by_method["rfc"]["time_ratio"] == pytest.approx(3.5 / 3.0)
    assert by_method["rfc"]["images_ratio"] == pytest.approx(100)
    assert result["jobs"]["linear_probe"] == {"jobs": 1, "mean_s": 6.0}
    assert scaling.plot_scaling(result, tmp_path / "scaling.png").exists()


def test_main_writes_summary_without_results(tmp_path):
    figures = cli.main(["--only", "end_to_end", "scaling", "--workdir", str(tmp_path), "--out", str(tmp_path / "bench"),
                        "--import-repeats", "1"])
    assert [f.status for f in figures] == ["N/A", "N/A"]
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert "## Performance" in summary and "run `make run` first" in summary
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["figures"]
    assert "startup_share" in json.loads((tmp_path / "bench" / "end_to_end.json").read_text())


def test_scaling_reads_run_labels_from_train_json_not_its_path(tmp_path):
    runs = tmp_path / "results" / "runs"
    for name, fraction, seconds, n in (("a", 0.5, 1.0, 10), ("b", 25.0, 4.0, 500)):
        record = runs / "anywhere" / name / "train.json"  # a layout no path parser would read
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"dataset": "pcam", "method": "rfc", "backbone": "vit", "seed": 7,
                                      "fraction": fraction, "n_train": n, "wall_seconds": seconds}))
    unlabelled = runs / "pcam" / "rfc" / "vit" / "seed7" / "frac50" / "train.json"  # the old layout, labels missing
    unlabelled.parent.mkdir(parents=True)
    unlabelled.write_text(json.dumps({"n_train": 1000, "wall_seconds": 9.0}))

    result = scaling.bench_scaling(tmp_path / "results")
    assert result["skipped_records"] == 1
    assert result["summary"] == [{"dataset": "pcam", "backbone": "vit", "method": "rfc", "low": 0.5, "high": 25.0,
                                  "s_low": 1.0, "s_high": 4.0, "time_ratio": 4.0, "images_ratio": 50.0}]
    assert any("left out" in d for d in scaling.scaling_figure(result, None).details)


def test_method_settings_come_from_the_validated_embedded_default():
    import yaml

    configured = yaml.safe_load((inputs.REPO / "config" / "config.yaml").read_text())
    config = inputs.embedded_default()
    params = inputs.method_params(config)
    for method, settings in configured["methods"].items():
        settings = {k: v for k, v in settings.items() if k not in ("base", "train_conditions", "label")}  # a variant's own keys
        assert {k: params[method][k] for k in settings} == settings
    assert "max_iter" not in configured["methods"]["linear_probe"] and params["linear_probe"]["max_iter"] > 0  # a default filled in
    synthetic = configured["datasets"]["synthetic"]
    assert synthetic["source"] == "synthetic" and inputs.prompt_templates(config) == synthetic["prompts"]["templates"]


def test_missing_config_is_one_clear_error(tmp_path):
    from medtune.plan import ConfigError

    with pytest.raises(ConfigError, match="config.yaml"):
        inputs.embedded_default(tmp_path)


SNAKEMAKE_LOG = """\
[Sun Nov 29 18:38:36 2026]
localrule prepare_dataset:
    output: results/data/d/images.npy, results/data/d/samples.csv
    log: results/logs/prepare_dataset/d.log
    jobid: 3
    benchmark: results/benchmarks/prepare_dataset/d.tsv
    wildcards: dataset=d
    resources: tmpdir=/tmp, runtime=120, mem_mb=4000, mem=4 GB, mem_mib=3815
[Sun Nov 29 18:38:36 2026]
localrule encode_images:
    input: results/data/d/images.npy
    output: results/features/t/d/test
    log: results/logs/encode_images/t/d/test.log
    jobid: 7
    benchmark: results/benchmarks/encode_images/t/d/test.tsv
    wildcards: backbone=t, dataset=d, split=test
[Sun Nov 29 18:39:24 2026]
Finished jobid: 3 (Rule: prepare_dataset)
1 of 3 steps (33%) done
"""


def test_scale_reads_jobs_from_snakemakes_log():
    from medtune.bench import scale, scale_report

    started, finished = scale.parse_jobs(SNAKEMAKE_LOG)
    assert finished == ["3"] and set(started) == {"3", "7"}
    assert scale.job_identity(started["3"]) == "prepare_dataset: results/data/d/images.npy, results/data/d/samples.csv"
    assert scale_report.stage_of(started["7"]) == "encode_images test" and scale_report.stage_of(started["3"]) == "prepare_dataset"
    assert scale_report.method_of({"rule": "train_frozen", "wildcards": "dataset=d, trained=rfc, backbone=t, seed=1"}) == "rfc"


def test_scale_config_is_pcams_shape_and_valid():
    from medtune import plan
    from medtune.bench import scale

    config = plan.validate(scale.scale_config(1))
    assert config["datasets"]["pcam-synthetic"]["sizes"] == {"train": 262_144, "val": 32_768, "test": 32_768}
    assert len(config["datasets"]["pcam-synthetic"]["classes"]) == 2
    assert len(plan.conditions_for(config, "pcam-synthetic", "tiny", "zeroshot")) == 29
    assert len([r for r in plan.runs(config) if r.method == "rfc"]) == 6 * 3
    assert len([r for r in plan.runs(config) if r.method == "knn"]) == 6 * 3  # the "and kNN once it exists"


def _fake_scale(images: int, seconds: dict[str, float], rss: float = 500.0) -> dict:
    method = {"zeroshot": "zeroshot", "train_frozen knn": "knn"}
    jobs = [{"stage": stage, "method": method.get(stage), "job": stage, "wall_s": s, "cpu_s": s,
             "peak_rss_mb": rss, "benchmark_max_rss_mb": rss, "disk_mb": images / 1000} for stage, s in seconds.items()]
    return {"images": images, "sizes": {"train": images}, "jobs": jobs, "retrieval_methods": ["zeroshot"]}


def test_scale_goals_from_slopes_and_peaks():
    from medtune.bench import scale_report

    # encode grows linearly, zero-shot (retrieval) quadratically, tables not at all; 4x the images each step
    scales = {label: _fake_scale(n, {"encode_images test": n / 100, "zeroshot": (n / 1000) ** 2, "tables": 3.0,
                                     "train_frozen knn": (n / 2000) ** 2})
              for label, n in (("1_16", 1000), ("1_4", 4000))}
    result = scale_report.report(scales, [{"n": 1024, "cpu_s": 1.0, "peak_rss_mb": 600, "rss_before_mb": 550, "nxn_float32_mb": 4.0},
                                          {"n": 4096, "cpu_s": 16.0, "peak_rss_mb": 620, "rss_before_mb": 550,
                                           "nxn_float32_mb": 64.0}])
    stages = result["stages"]
    assert stages["encode_images test"]["slope_cpu"] == pytest.approx(1.0)
    assert stages["zeroshot"]["slope_cpu"] == pytest.approx(2.0) and stages["zeroshot"]["slope_limit"] == 2.05
    assert stages["tables"]["slope_cpu"] == pytest.approx(0.0)
    # kNN scores test x train: quadratic like retrieval, and judged by the same limit
    assert stages["train_frozen knn"]["slope_cpu"] == pytest.approx(2.0) and stages["train_frozen knn"]["slope_limit"] == 2.05
    goals = result["goals"]
    assert goals["slopes"]["ok"] and goals["peak_rss"]["ok"] and goals["retrieval_slope"]["slope_cpu"] == pytest.approx(2.0)
    assert not goals["no_nxn_matrix"]["ok"]  # it grew by 70 MB, room for a 64 MB N x N matrix: not shown absent
    # extrapolated to PCam's 327,680 images along each stage's own slope
    full = scale_report.FULL_IMAGES
    assert stages["zeroshot"]["at_full_size"]["cpu_s"] == pytest.approx((full / 1000) ** 2)
    scales["1_4"]["jobs"][0]["cpu_s"] *= 2  # encode now grows 8x for 4x the images: slope 1.5
    assert scale_report.report(scales, [])["goals"]["slopes"]["over_limit"] == {"encode_images test": pytest.approx(1.5)}
    assert any("MISS" in line for line in scale_report.summary_lines(scale_report.report(scales, [])))


def _fake_default_run(root, n_train=120, classes=3):
    """A finished run's layout as the linear probe reads it: tiny-path's clean features of the
    synthetic dataset, samples.csv, and seed 1's subsets at 10 % and 50 %."""
    import pandas as pd

    from medtune.bench import linear_probe_path as lp

    features = lp.synthetic_features(n_train, 60, 60, 6, classes, seed=1, separation=0.8)
    rows, start = [], 0
    for split in ("train", "val", "test"):
        x, y = features[split]
        folder = root / "results" / "features" / "tiny-path" / "synthetic" / split
        folder.mkdir(parents=True)
        np.save(folder / "clean.npy", x)
        rows += [(start + i, split, int(c), f"class{c}", "g") for i, c in enumerate(y)]
        start += len(y)
    (root / "results" / "data" / "synthetic").mkdir(parents=True)
    samples = pd.DataFrame(rows, columns=["index", "split", "label", "label_name", "group"]).assign(caption="")
    samples.to_csv(root / "results" / "data" / "synthetic" / "samples.csv", index=False)
    subsets = root / "results" / "subsets" / "synthetic" / "seed1"
    subsets.mkdir(parents=True)
    for fraction, n in (("50", n_train // 2), ("10", n_train // 10)):
        samples[samples["split"] == "train"].head(n)[["index", "label"]].to_csv(subsets / f"frac{fraction}.csv", index=False)
    return features


def test_linear_probe_path_figure_times_both_sweeps(tmp_path):
    from medtune.bench import linear_probe_path as lp

    drawn = {"source": "drawn", "n_train": 300, "n_val": 200, "n_test": 100, "dim": 8, "classes": 3, "separation": 0.5}
    features = lp.size_features(drawn, None)
    assert features["train"][0].shape == (300, 8) and features["train"][0].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features["test"][0], axis=1), 1.0, rtol=1e-5)
    sizes = {"own": {"source": "default"}, "drawn": drawn}
    # without the default's run: its size is N/A, and so is the figure
    r = lp.bench_linear_probe_path(sizes, tmp_path / "results", log=lambda message: None)
    assert "samples.csv" in r["own"]["missing"] and r["drawn"]["speedup"] > 0
    figure = lp.linear_probe_path_figure(r)
    assert figure.status == "N/A" and "make run" in figure.details[0]

    own = _fake_default_run(tmp_path)
    assert np.array_equal(lp.size_features(sizes["own"], tmp_path / "results")["train"][0], own["train"][0][:60])
    r = lp.bench_linear_probe_path(sizes, tmp_path / "results", log=lambda message: None)
    # the default's own 50 % subset of seed 1 (the first 60 training rows here), its whole validation split
    assert (r["own"]["n_train"], r["own"]["classes"], r["own"]["n_val"]) == (60, 3, 60)
    for name in sizes:
        assert len(r[name]["path_runs_s"]) == 2 and r[name]["speedup"] == pytest.approx(r[name]["cold_s"] / np.mean(r[name]["path_runs_s"]))
        assert 25 <= r[name]["path"]["fits"] <= 29 and 25 <= r[name]["cold"]["fits"] <= 29  # the same coarse-to-fine search
        assert 0 < r[name]["path"]["test_accuracy"] <= 1 and 0 < r[name]["cold"]["test_accuracy"] <= 1
    figure = lp.linear_probe_path_figure(r)
    assert figure.value == min(r["own"]["speedup"], r["drawn"]["speedup"]) and figure.status in ("PASS", "MISS")
    assert "own (60 x 6 features, 3 classes, default)" in figure.details[0] and "drawn" in figure.details[1]


def test_compare_runs_lines_rows_up_and_flags_the_expected_method(tmp_path):
    from medtune.bench import compare_runs

    def write(root, rows):
        (root / "results" / "tables").mkdir(parents=True)
        pd.DataFrame(rows, columns=["dataset", "method", "fraction", "accuracy_mean", "train_seconds_mean"]).to_csv(
            root / "results" / "tables" / "clipath_accuracy.csv", index=False)

    import pandas as pd

    write(tmp_path / "a", [("d", "zeroshot", np.nan, 0.5, np.nan), ("d", "linear_probe", 1.0, 0.7, 3.0), ("d", "rfc", 1.0, 0.8, 9.0)])
    write(tmp_path / "b", [("d", "rfc", 1.0, 0.8, 1.0), ("d", "zeroshot", np.nan, 0.5, np.nan), ("d", "linear_probe", 1.0, 0.71, 0.5),
                           ("d", "knn", 1.0, 0.6, 0.1)])
    found = compare_runs.compare_runs(tmp_path / "a", tmp_path / "b", ["linear_probe"])["clipath_accuracy"]
    # rows matched whatever their order; times ignored; NaN keys (zero-shot) matched
    # a row the new run adds (a new method's) is expected; a changed one only of the methods named
    assert sorted(zip(found["method"], found["status"], found["expected"])) == [
        ("knn", "only in new", True), ("linear_probe", "differs", True)]
    assert found.loc[found["method"] == "linear_probe", "columns"].item() == "accuracy_mean"
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--expect", "linear_probe"]) == 0
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    # a row the new run lost is never expected; a column it adds (a new backbone's) is listed, the rest compared
    table = tmp_path / "c" / "results" / "tables" / "clipath_accuracy.csv"
    table.parent.mkdir(parents=True)
    pd.read_csv(tmp_path / "a" / "results" / "tables" / "clipath_accuracy.csv").iloc[1:].assign(f1_mean=0.1).to_csv(table, index=False)
    found = compare_runs.compare_runs(tmp_path / "a", tmp_path / "c", ["linear_probe"])["clipath_accuracy"]
    assert list(zip(found["method"], found["status"], found["expected"])) == [("zeroshot", "only in base", False)]
    assert found.attrs["added_columns"] == ["f1_mean"]


def test_linear_probe_path_on_a_finished_runs_subsets(tmp_path):
    """The run's own features and subsets, as the linear probe's job reads them: a row per subset."""
    from medtune.bench import linear_probe_path as lp

    _fake_default_run(tmp_path)
    found = lp.bench_run_subsets(tmp_path, log=lambda message: None)
    assert [r["subset"] for r in found] == ["frac10", "frac50"] and [r["images"] for r in found] == [12, 60]
    assert all(r["path_cpu_s"] > 0 and r["cold_cpu_s"] > 0 and 0 <= r["path_test"] <= 1 for r in found)
