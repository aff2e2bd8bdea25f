"""The command line of ``python -m medtune.bench``: which figures to measure, on what, and where they go."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import medtune.bench
from medtune.bench.figure import Figure
from medtune.bench.inputs import REPO
from medtune.bench.linear_probe_path import SIZES as LP_SIZES
from medtune.bench.summary import write_json, write_summary
from medtune.conditions import ALL_CONDITIONS

FIGURES = ("encode", "corrupt", "dag", "end_to_end", "scaling", "linear_probe_path")
METHODS = ("rfc", "linear_probe", "coop")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medtune.bench", description=medtune.bench.__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--backbone", default="medtune-tiny", help="open_clip architecture, built with random weights (e.g. RN50)")
    p.add_argument("--image-size", type=int, default=None, help="model input size (default: the architecture's own)")
    p.add_argument("--batch-size", type=int, default=256, help="encoding batch size (the pipeline's)")
    p.add_argument("--data-size", type=int, default=64, help="side of the synthetic store's images (resized to the model's)")
    p.add_argument("--n-train", type=int, default=300, help="train split of the synthetic store")
    p.add_argument("--n-val", type=int, default=75)
    p.add_argument("--n-test", type=int, default=256, help="images encoded under every condition (figure 2)")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 10.0, 50.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of RFC and CoOp in figure 1 (default: as config/config.yaml, like every other setting)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--only", nargs="+", choices=list(FIGURES), default=None, help="run only these figures")
    p.add_argument("--repo", type=Path, default=REPO, help="the workflow's folder (Snakefile, config/)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the embedded default runs (snakemake --directory; its results/ and .snakemake/log); default: REPO")
    p.add_argument("--results", type=Path, default=None, help="the embedded default's results (default: WORKDIR/results)")
    p.add_argument("--out", type=Path, default=None, help="where the bench writes (default: RESULTS/bench)")
    p.add_argument("--paper-config", type=Path, default=None, help="default: REPO/config/paper/all.yaml")
    p.add_argument("--with-default-run", action="store_true", help="run the embedded default (snakemake) before the no-op check")
    p.add_argument("--cores", type=int, default=2, help="--cores for snakemake")
    p.add_argument("--import-repeats", type=int, default=2)
    p.add_argument("--lp-sizes", nargs="+", default=None, choices=list(LP_SIZES),
                   help="feature sizes of figure 6 (default: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on the CPU; 1 (as the pipeline's training jobs) keeps timings stable on a shared "
                        "machine, 0 for torch's default (all cores)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def _limit_threads(threads: int) -> int:
    """Torch's and scikit-learn's thread pools to ``threads`` (0: leave them); the torch threads in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
        with contextlib.suppress(ImportError):  # NumPy's and SciPy's BLAS pools too (the linear probe)
            import scipy.linalg  # noqa: F401  (threadpoolctl limits the pools of libraries already loaded; SciPy has its own BLAS)
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
    return torch.get_num_threads()


def _models(args, only: set[str], device, settings: dict[str, Any]):
    """The random backbone and the synthetic store figures 1 and 2 run on (only the splits they need)."""
    from medtune.bench.inputs import make_backbone, make_data

    t0 = time.perf_counter()
    backbone = make_backbone(args.backbone, args.image_size, str(device))
    images, samples = make_data(args.n_train if "encode" in only else 0, args.n_val if "encode" in only else 0,
                                args.n_test if "corrupt" in only else 0, args.data_size)
    settings["image_size"] = backbone.image_size
    log(f"random {args.backbone} at {backbone.image_size} px on {device}, {len(images)} synthetic {args.data_size} px images "
        f"({time.perf_counter() - t0:.1f} s to build)")
    threads = settings["threads"]
    settings["summary"] = (f"{args.backbone} (random weights) at {backbone.image_size} px on {device} "
                           f"({threads} torch thread{'s' if threads > 1 else ''}), encode batch {args.batch_size}")
    return backbone, images, samples


def _encode_once(args, repo: Path, models, device, settings: dict[str, Any], out: Path) -> list[Figure]:
    from medtune.bench.encode_once import bench_encode_once, encode_once_figure
    from medtune.bench.inputs import embedded_default, method_params, prompt_templates

    config = embedded_default(repo)  # the settings every run of the pipeline uses, defaults filled in
    params = method_params(config)
    if args.epochs:
        for name in ("rfc", "coop"):
            params[name]["epochs"] = args.epochs
    epochs = ", ".join(f"{name} {params[name]['epochs']}" for name in ("rfc", "coop") if name in args.methods)
    log(f"[1/6] encode once: {args.methods} x fractions {args.fractions} x seeds {args.seeds}, epochs: {epochs}")
    backbone, images, samples = models
    r = bench_encode_once(backbone, images, samples, args.fractions, args.seeds, params, prompt_templates(config),
                          args.methods, device, args.batch_size, log=log)
    figure = encode_once_figure(r)
    write_json(figure.to_json(), out / "encode_once.json")
    settings["summary"] += (f"; figure 1: {args.n_train} train + {args.n_val} val images, fractions {args.fractions} %, "
                            f"seeds {args.seeds}, epochs: {epochs}")
    return [figure]


def _corrupt(args, models, device, settings: dict[str, Any], out: Path) -> list[Figure]:
    from medtune.bench.corrupt_throughput import bench_corrupt_throughput, corrupt_figure

    log(f"[2/6] corrupted evaluation: {args.n_test} images x {len(ALL_CONDITIONS)} conditions")
    backbone, images, samples = models
    test_idx = np.array(samples.loc[samples["split"] == "test", "index"])
    figure = corrupt_figure(bench_corrupt_throughput(backbone, images, test_idx, list(ALL_CONDITIONS), device, args.batch_size))
    write_json(figure.to_json(), out / "corrupt_throughput.json")
    settings["summary"] += f"; figure 2: {args.n_test} images x {len(ALL_CONDITIONS)} conditions"
    return [figure]


def _dag(args, repo: Path, workdir: Path, out: Path) -> list[Figure]:
    from medtune.bench.dag import bench_dag_paper, bench_noop_default, dag_paper_figure, noop_figure

    paper = (args.paper_config or repo / "config" / "paper" / "all.yaml").resolve()
    log(f"[3/6] DAG build: snakemake -n on {paper.name}; no-op re-run of the embedded default")
    figures = [dag_paper_figure(bench_dag_paper(repo, paper, args.cores))]
    log(figures[-1].line())
    figures.append(noop_figure(bench_noop_default(repo, workdir, args.cores, args.with_default_run, out)))
    write_json({f.key: f.to_json() for f in figures}, out / "dag.json")
    return figures


def _end_to_end(args, results: Path, workdir: Path, out: Path) -> list[Figure]:
    from medtune.bench.end_to_end import bench_end_to_end, end_to_end_figure

    log("[4/6] embedded default end to end, from results/benchmarks and .snakemake/log")
    from medtune.bench.inputs import embedded_default

    config = embedded_default(args.repo.resolve())
    arch = next(iter(config["backbones"].values()))["arch"]  # the default's backbones are all medtune-tiny
    figure = end_to_end_figure(bench_end_to_end(results, workdir, args.import_repeats, methods=config["methods"], arch=arch))
    write_json(figure.to_json(), out / "end_to_end.json")  # startup_share at its top level
    return [figure]


def _scaling(results: Path, out: Path) -> list[Figure]:
    from medtune.bench.scaling import bench_scaling, plot_scaling, scaling_figure

    log("[5/6] scaling: results/runs/**/train.json")
    r = bench_scaling(results)
    figure = scaling_figure(r, plot_scaling(r, out / "scaling.png"))
    write_json(figure.to_json(), out / "scaling.json")
    return [figure]


def _linear_probe_path(args, results: Path, out: Path) -> list[Figure]:
    from medtune.bench.linear_probe_path import bench_linear_probe_path, linear_probe_path_figure

    sizes = {name: LP_SIZES[name] for name in (args.lp_sizes or LP_SIZES)}
    log(f"[6/6] linear-probe path vs the cold sweep it replaced: {', '.join(sizes)}")
    figure = linear_probe_path_figure(bench_linear_probe_path(sizes, results, log=log))
    write_json(figure.to_json(), out / "linear_probe_path.json")
    return [figure]


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    args = parse_args(argv)
    repo = args.repo.resolve()
    workdir = (args.workdir or repo).resolve()
    results = (args.results or workdir / "results").resolve()
    out = (args.out or results / "bench").resolve()
    only = set(args.only or FIGURES)
    started = time.perf_counter()

    from medtune.bench.machine import describe_machine, machine
    from medtune.training import resolve_device

    threads = _limit_threads(args.threads)
    device = resolve_device(args.device) if {"encode", "corrupt"} & only else None
    m = machine()
    settings = {"device": str(device), "threads": threads, "backbone": args.backbone, "image_size": args.image_size,
                "batch_size": args.batch_size, "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
                "data_size": args.data_size, "fractions": args.fractions, "seeds": args.seeds, "epochs": args.epochs,
                "methods": args.methods, "summary": "figures 3-5 only (no model run)"}
    log(f"medtune bench on {describe_machine(m)}")

    models = _models(args, only, device, settings) if {"encode", "corrupt"} & only else None
    steps: dict[str, Callable[[], list[Figure]]] = {
        "encode": lambda: _encode_once(args, repo, models, device, settings, out),
        "corrupt": lambda: _corrupt(args, models, device, settings, out),
        "dag": lambda: _dag(args, repo, workdir, out),
        "end_to_end": lambda: _end_to_end(args, results, workdir, out),
        "scaling": lambda: _scaling(results, out),
        "linear_probe_path": lambda: _linear_probe_path(args, results, out),
    }
    figures: list[Figure] = []
    for name in FIGURES:
        if name in only:
            figures += steps[name]()
            log(figures[-1].line())

    text = write_summary(figures, settings, m, time.perf_counter() - started, out)
    print()
    print(text)
    print(f"written: {out}/summary.md and *.json")
    return figures
