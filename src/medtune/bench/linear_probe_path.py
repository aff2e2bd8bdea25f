"""Figure 6, the linear probe's regularisation path against the cold sweep it replaced (issue 30).

Also on a finished run's own features, subset by subset (not part of ``make bench``)::

    python -m medtune.bench.linear_probe_path RUN_DIR [--seed 1] [--backbone tiny-path] [--dataset synthetic]


Both run CLIP's coarse-to-fine search over the same 97-value grid with the same selection rule,
on the same features, one after the other and timed here:

* ``cold``: the linear probe of 70e4811, re-typed — every C a cold scikit-learn L-BFGS fit of
  the float32 features, at most 1,000 iterations (:func:`cold_sweep`);
* ``path``: :func:`medtune.methods.linear_probe.fit`, Newton's method from the nearest C's solution.

at two sizes:

* ``default_50pct``: the embedded default's own features, read from its finished run (``make
  run``; N/A without it, as figures 4 and 5): its 50 % subset of seed 1 (10,001 training images,
  nine classes, 64-d features of its pathology backbone ``tiny-path``) with its validation and
  test images, the linear probe's largest fit in ``make run``;
* ``pcam_50pct``: PCam's size at 50 % (131,072 training, 32,768 validation and test images, two
  classes, 64-d), drawn here (:func:`synthetic_features`: Gaussian clusters on the sphere, as
  hard to tell apart as PCam, about 81 % accuracy). Encoding the scale rehearsal's store of that
  size takes minutes, and drawing rows of the default's two first classes to that size makes
  a problem no probe finds hard (99.8 % validation accuracy).

What decides the ratio is how hard the fits are for L-BFGS. The default's nine-class features
are ill-conditioned (singular values over three decades): its weakly regularised fits take
hundreds of iterations and the path, which warm-starts each one, wins. At PCam's size the two
classes' fits converge in tens of iterations at every C, a cold sweep makes about a dozen
passes over the features per C, and a path that solves every C to its optimum (a Hessian, a
gradient and the step's logits: at least three passes, in float64) cannot be ten times faster;
there it is slower, and what it buys is the optimum itself (rows that do not depend on threads
or precision).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medtune.bench.figure import Figure

DEFAULT_RUN = {"dataset": "synthetic", "backbone": "tiny-path", "seed": 1, "subset": "frac50"}
SIZES = {
    "default_50pct": {"source": "default"},
    # separation of the class centres: about 81 % accuracy at this size
    "pcam_50pct": {"source": "drawn", "n_train": 131_072, "n_val": 32_768, "n_test": 32_768, "dim": 64, "classes": 2,
                   "separation": 0.1},
}
SEARCH = {"C_range": [1e-6, 1e6], "steps_per_decade": 8, "search": "coarse_to_fine", "max_iter": 100}


def synthetic_features(n_train: int, n_val: int, n_test: int, dim: int, classes: int, seed: int = 0,
                       separation: float = 0.6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (float32 L2-normalised features, labels)}``: one Gaussian cluster a class around
    a random direction, noise with a spectrum decaying as 1/rank in a random basis (a few
    directions carry most of the variance, as in encoder features), classes in equal turns."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scale = 1.0 / np.sqrt(np.arange(1, dim + 1))
    scale *= 1.0 / np.linalg.norm(scale)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % classes
        x = centres[labels] + (rng.normal(size=(n, dim)) * scale) @ basis.T
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels

    return {"train": draw(n_train), "val": draw(n_val), "test": draw(n_test)}


def cold_sweep(train_x, train_y, val_x, val_y, params: dict[str, Any]):
    """The linear probe's sweep as it was until issue 30: a cold scikit-learn fit (L-BFGS, at most
    ``max_iter`` 1,000 iterations) at every C the search visits. The chosen classifier and the fits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from medtune.methods.linear_probe import c_grid, search_indices

    grid = c_grid(params["C_range"], params["steps_per_decade"])
    fits: dict[float, tuple[Any, float]] = {}

    def score(i: int) -> float:
        clf = LogisticRegression(C=float(grid[i]), max_iter=1000, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(train_x, train_y)
        fits[float(grid[i])] = (clf, float(clf.score(val_x, val_y)))
        return fits[float(grid[i])][1]

    best = search_indices(score, len(grid), max(1, params["steps_per_decade"] // 2), params["search"])
    return fits[float(grid[best])][0], fits


def _path_sweep(features, params):
    from medtune.heads import FitData, build_head, fit, predict

    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    classes = int(max(train_y.max(), val_y.max())) + 1
    data = FitData(train_x, train_y, val_x, val_y, np.zeros((classes, train_x.shape[1]), np.float32), 1.0)
    state, info = fit("linear_probe", data, params, seed=0)
    head = build_head(state)
    return info, lambda x: predict(head, x).argmax(axis=1)


def size_features(spec: dict[str, Any], results: Path | None, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (float32 features, labels)}`` of one of :data:`SIZES`. The default's own need its
    features and subsets under ``results``: FileNotFoundError naming the missing file otherwise."""
    if spec["source"] == "drawn":
        return synthetic_features(spec["n_train"], spec["n_val"], spec["n_test"], spec["dim"], spec["classes"], seed,
                                  spec["separation"])
    from medtune.adapt import subset_positions

    if results is None:
        raise FileNotFoundError("no results folder of the embedded default")
    subset = results / "subsets" / DEFAULT_RUN["dataset"] / f"seed{DEFAULT_RUN['seed']}" / f"{DEFAULT_RUN['subset']}.csv"
    out = {}
    for split, (x, rows) in run_features(results, DEFAULT_RUN["dataset"], DEFAULT_RUN["backbone"]).items():
        # the default's own subset, as its linear-probe job reads it
        positions = subset_positions(rows, subset) if split == "train" else np.arange(len(rows))
        out[split] = (np.asarray(x[positions], dtype=np.float32), rows["label"].to_numpy()[positions])
    return out


def bench_size(name: str, features, params: dict[str, Any] = SEARCH, log=print) -> dict[str, Any]:
    """Both sweeps on one feature set: seconds, chosen C, validation and test accuracy of each."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = features["train"], features["val"], features["test"]
    # the path before and after the cold sweep, their mean against it: a drift in the machine's
    # speed during the run falls on both sides alike
    path_s = []
    for _ in range(2):
        t0 = time.perf_counter()
        info, path_predict = _path_sweep(features, params)
        path_s.append(time.perf_counter() - t0)
        log(f"  {name}: path {path_s[-1]:.2f} s ({info['fits']} fits, {info['newton_steps']} Newton steps, {info['hessians']} Hessians)")
        if len(path_s) == 1:
            t0 = time.perf_counter()
            clf, cold_fits = cold_sweep(train_x, train_y, val_x, val_y, params)
            cold_s = time.perf_counter() - t0
            at_max_iter = sum(int(np.max(c.n_iter_)) >= 1000 for c, _ in cold_fits.values())
            log(f"  {name}: cold sweep {cold_s:.1f} s ({len(cold_fits)} fits, {at_max_iter} stopped at max_iter)")
    path_mean = float(np.mean(path_s))
    return {
        "n_train": len(train_y), "n_val": len(val_y), "n_test": len(test_y), "dim": int(train_x.shape[1]),
        "classes": len(np.unique(train_y)),
        "path_s": path_mean, "path_runs_s": path_s, "cold_s": cold_s, "speedup": cold_s / path_mean,
        "path": {"C": info["C"], "val_accuracy": info["val_accuracy_by_C"][str(info["C"])],
                 "test_accuracy": float((path_predict(test_x) == test_y).mean()), "fits": info["fits"],
                 "newton_steps": info["newton_steps"], "hessians": info["hessians"]},
        "cold": {"C": float(clf.C), "val_accuracy": cold_fits[float(clf.C)][1],
                 "test_accuracy": float(clf.score(test_x, test_y)), "fits": len(cold_fits), "at_max_iter": at_max_iter},
    }


def bench_linear_probe_path(sizes: dict[str, dict[str, Any]] = SIZES, results: Path | None = None, log=print) -> dict[str, Any]:
    """Per size: :func:`bench_size`'s result, or what is missing."""
    out = {}
    for name, spec in sizes.items():
        try:
            features = size_features(spec, results)
        except FileNotFoundError as err:
            log(f"  {name}: N/A ({err})")
            out[name] = {"missing": str(err)}
            continue
        out[name] = {"source": spec["source"], **bench_size(name, features, log=log)}
    return out


def linear_probe_path_figure(r: dict[str, Any]) -> Figure:
    """The smallest speed-up over the sizes against the 10x target; N/A where one of them could
    not be measured (the embedded default has not run)."""
    details = []
    for name, s in r.items():
        if "missing" in s:
            details.append(f"{name}: N/A, {s['missing']} (run `make run` first, or pass --with-default-run)")
            continue
        p, c = s["path"], s["cold"]
        details.append(
            f"{name} ({s['n_train']:,} x {s['dim']} features, {s['classes']} classes, {s['source']}): path "
            f"{s['path_s']:.2f} s, cold sweep {s['cold_s']:.1f} s ({c['at_max_iter']} of {c['fits']} fits at max_iter), "
            f"{s['speedup']:.1f}x; chosen C {p['C']:.3g} / {c['C']:.3g}, validation {p['val_accuracy']:.2%} / "
            f"{c['val_accuracy']:.2%}, test {p['test_accuracy']:.2%} / {c['test_accuracy']:.2%} (path / cold)")
    if any("missing" in s for s in r.values()):
        return Figure("linear_probe_path", "linear-probe path vs cold sweep", None, "not measured: no features of the embedded default",
                      details, {"result": r})
    worst = min(s["speedup"] for s in r.values())
    return Figure("linear_probe_path", "linear-probe path vs cold sweep", worst, f"{worst:.1f}x faster (smallest over sizes)",
                  details, {"result": r})


def run_features(results: Path, dataset: str, backbone: str):
    """A finished run's clean train, validation and test features of ``backbone`` on ``dataset``
    (under its ``results`` folder) and their rows, as the linear probe's job reads them."""
    from medtune.adapt import EVAL_COLUMNS, split_features
    from medtune.data.store import read_samples

    table = read_samples(results / "data" / dataset / "samples.csv", columns=EVAL_COLUMNS)
    folder = results / "features" / backbone / dataset
    return {split: split_features(folder / split, table, split) for split in ("train", "val", "test")}


def bench_run_subsets(run: Path, seed: int = 1, dataset: str = "synthetic", backbone: str = "tiny-path",
                      params: dict[str, Any] = SEARCH, log=print) -> list[dict[str, Any]]:
    """Per training subset of ``seed`` in a finished run: the path and the old cold sweep on its
    features, one after the other, in CPU seconds (both single-threaded), with each one's choice."""
    from medtune.adapt import subset_positions
    from medtune.heads import FitData, build_head, fit, predict

    features = run_features(run / "results", dataset, backbone)
    (train_x, train_rows), (val_x, val_rows), (test_x, test_rows) = (features[s] for s in ("train", "val", "test"))
    val_x, test_x = np.asarray(val_x), np.asarray(test_x)
    val_y, test_y = val_rows["label"].to_numpy(), test_rows["label"].to_numpy()
    classes = int(train_rows["label"].max()) + 1
    out = []
    subsets = sorted((run / "results" / "subsets" / dataset / f"seed{seed}").glob("frac*.csv"), key=lambda p: float(p.stem[4:]))
    for path in subsets:
        picked = subset_positions(train_rows, path)
        x, y = np.asarray(train_x[picked]), train_rows["label"].to_numpy()[picked]
        data = FitData(x, y, val_x, val_y, np.zeros((classes, x.shape[1]), np.float32), 1.0)
        t0 = time.process_time()
        state, info = fit("linear_probe", data, params, seed=0)
        path_s = time.process_time() - t0
        t0 = time.process_time()
        clf, cold = cold_sweep(x, y, val_x, val_y, params)
        cold_s = time.process_time() - t0
        row = {"subset": path.stem, "images": len(y), "path_cpu_s": path_s, "cold_cpu_s": cold_s, "ratio": cold_s / path_s,
               "path_C": info["C"], "cold_C": float(clf.C), "path_val": info["val_accuracy_by_C"][str(info["C"])],
               "cold_val": cold[float(clf.C)][1], "path_test": float((predict(build_head(state), test_x).argmax(1) == test_y).mean()),
               "cold_test": float(clf.score(test_x, test_y)), "load": os.getloadavg()[0]}
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        out.append(row)
    return out


def main(argv=None) -> None:
    import argparse
    import contextlib

    p = argparse.ArgumentParser(prog="python -m medtune.bench.linear_probe_path", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run's folder (its results/)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--backbone", default="tiny-path")
    args = p.parse_args(argv)
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only the BLAS pools already loaded)
    import sklearn.linear_model  # noqa: F401

    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    bench_run_subsets(args.run, args.seed, args.dataset, args.backbone)


if __name__ == "__main__":
    main()
