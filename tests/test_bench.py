"""Smoke test of the benchmark's measurements on tiny sizes (the targets are the bench's, not checked here)."""

import json
from pathlib import Path

import numpy as np
import pytest

from medtune import bench


@pytest.fixture(scope="module")
def tiny():
    backbone = bench.make_backbone("medtune-tiny", image_size=32)
    images, samples = bench.make_data(n_train=20, n_val=10, n_test=6, image_size=32)
    return backbone, images, samples


def test_encode_once_times_both_paths(tiny):
    backbone, images, samples = tiny
    params = {
        "rfc": {"alphas": [0.5], "lr": 1e-3, "weight_decay": 0.0, "epochs": 1, "batch_size": 8, "hidden_widths": ["d/4", 64, "d/4"],
                "final_relu": True},
        "linear_probe": {"C_range": [1.0, 1.0], "steps_per_decade": 1, "search": "grid", "max_iter": 1000},
        "coop": {"n_ctx": 2, "epochs": 1, "batch_size": 4, "lr": 0.01},
    }
    r = bench.bench_encode_once(backbone, images, samples, [50], [1], params, batch_size=16, warmup=False)
    assert len(r["runs"]) == 3
    assert r["cached_images"] == 30
    assert r["naive_images"] == sum(v["naive_images"] for v in r["per_method"].values()) > 0
    assert r["cached_s"] > 0 and r["reencode_s"] > 0 and r["public_s"] > 0
    assert np.isfinite(r["ratio"]) and np.isfinite(r["ratio_reencode"])
    # both paths train the same models: at most one validation image flips on float noise
    assert r["max_val_accuracy_difference"] <= 0.1 + 1e-9
    fig = bench.encode_once_figure(r)
    assert fig.line().startswith("encode once") and fig.status in {"PASS", "MISS"}


def test_upstream_coop_text_encoder_gives_the_pipelines_prompt_features(tiny):
    """The public-code path runs CoOp's own text encoder over the whole context: the same features, more work."""
    import torch

    from medtune.methods.coop import PromptLearner

    backbone = tiny[0]
    learner = PromptLearner(backbone.model, backbone.tokenizer, ["tumor", "normal tissue"], n_ctx=3,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bench.upstream_prompt_features(backbone.model, learner), learner(backbone.model),
                                   atol=1e-5, rtol=0)


def test_corrupt_throughput_on_few_conditions(tiny):
    backbone, images, samples = tiny
    test_idx = np.array(samples.loc[samples["split"] == "test", "index"])
    r = bench.bench_corrupt_throughput(backbone, images, test_idx, ["clean", "blur-1", "markup-1"], batch_size=4, repeats=1)
    assert r["conditions"] == 3 and r["images"] == len(test_idx)
    assert set(r["per_condition_s"]) == {"clean", "blur-1", "markup-1"}
    assert r["full_s"] > 0 and r["bare_s"] > 0 and r["ratio"] > 0
    assert bench.corrupt_figure(r).status in {"PASS", "MISS"}


def test_job_count_parses_dry_run_output():
    stats = "Job stats:\njob      count\n-----  -------\nall        1\ntrain     12\ntotal     13\n\nReasons:"
    assert bench.job_count(stats) == 13
    assert bench.job_count("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).") == 0
    assert bench.job_count("Error") is None
    reasons = ("total 3\n\nReasons:\n    (check individual jobs above for details)\n    params have changed since last execution:\n"
               "        encode_images\n    output files have to be generated:\n        train_frozen, tables\n"
               "This was a dry-run (flag -n).")
    assert bench.dry_run_reasons(reasons) == {"params have changed since last execution": "encode_images",
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
            record.write_text(json.dumps({"n_train": n, "wall_seconds": s}))
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
    e2e = bench.bench_end_to_end(results, tmp_path, import_repeats=1, imports=dict.fromkeys(bench.STARTUP_IMPORTS, "import json"))
    assert e2e["benchmark_files"] == 3
    assert e2e["job_seconds"] == pytest.approx(9.0 + 6.0 + 10.0)
    assert e2e["per_rule"]["train"]["jobs"] == 2
    assert e2e["last_complete_run"]["wall_s"] == 330
    assert e2e["jobs_by_kind"] == {"data": 1, "frozen fit": 2} and all(s > 0 for s in e2e["import_s"].values())
    assert bench.end_to_end_figure(e2e).value == 330

    scaling = bench.bench_scaling(results)
    by_method = {s["method"]: s for s in scaling["summary"]}
    assert by_method["rfc"]["time_ratio"] == pytest.approx(3.5 / 3.0)
    assert by_method["rfc"]["images_ratio"] == pytest.approx(100)
    assert scaling["jobs"]["linear_probe"] == {"jobs": 1, "mean_s": 6.0}
    assert bench.plot_scaling(scaling, tmp_path / "scaling.png").exists()


def test_main_writes_summary_without_results(tmp_path):
    figures = bench.main(["--only", "end_to_end", "scaling", "--workdir", str(tmp_path), "--out", str(tmp_path / "bench"),
                          "--import-repeats", "1"])
    assert [f.status for f in figures] == ["N/A", "N/A"]
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert "## Performance" in summary and "run `make run` first" in summary
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["figures"]
