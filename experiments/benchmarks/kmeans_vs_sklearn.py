"""k-means++: ``dmeta.cluster.kmeans.kmeans`` against scikit-learn's ``KMeans``, same machine, one run.

Both fit the same float32 Gaussian-blob data (``2 k`` true blobs, so that the seeding matters)
with the same k, greedy k-means++ seeding (``2 + log k`` local trials), one initialization,
Lloyd iterations and the same ``max_iter`` and tolerance (scikit-learn's ``tol`` is relative to
the mean feature variance; dmeta gets the equivalent absolute value), once per seed. dmeta's fit
is compiled ahead (``jax.jit(...).lower(...).compile()``, reported as ``dmeta_compile_s``) and
not timed. Repeats of both are interleaved and the median time per fit is reported, with the
load average, because the CPU is shared. Inertia is recomputed for both in float64 from the
centroids; ``inertia_ratio_vs_sklearn`` is the mean over seeds of dmeta's over scikit-learn's
(below 1: dmeta found tighter clusters). One line per figure (``name: value unit``); the last
line is ``speedup_vs_sklearn: X`` (scikit-learn's time per fit over dmeta's).

    .venv/bin/python experiments/benchmarks/kmeans_vs_sklearn.py \
        --out experiments/results/benchmarks/kmeans_vs_sklearn.txt
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import numpy as np

from dmeta.cluster.kmeans import kmeans
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    require,
)


def blobs(n: int, features: int, centers: int, *, seed: int) -> np.ndarray:
    """``n`` points f32[N, F] around ``centers`` random centres (N(0, 4^2) per coordinate)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 4.0, (centers, features))
    return (means[rng.integers(0, centers, n)] + rng.normal(size=(n, features))).astype(np.float32)


def inertia64(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over points of the squared distance to the nearest centroid, in float64."""
    x, c = x.astype(np.float64), np.asarray(centroids, np.float64)
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return float(np.maximum(d2, 0.0).min(1).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's relative tol")
    parser.add_argument("--seeds", type=int, default=10, help="fits (seeds 0..n-1) per repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per contender")
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    sklearn = require("sklearn")
    from sklearn.cluster import KMeans

    if args.quick:
        args.points, args.features, args.k, args.seeds = 2_000, 4, 4, 2
    repeats = args.repeats or (1 if args.quick else 5)
    x = blobs(args.points, args.features, 2 * args.k, seed=1234)
    abs_tol = float(np.mean(np.var(x, axis=0)) * args.tol)
    seeds = range(args.seeds)
    emit = Report()

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"data: {args.points} points x {args.features} features (float32, {2 * args.k} blobs), "
        f"k={args.k}, k-means++, n_init=1, max_iter={args.max_iter}, tol={args.tol} "
        f"(relative; absolute {abs_tol:.3g}), seeds={args.seeds}, repeats={repeats}"
    )
    emit(
        f"versions: jax {jax.__version__}, scikit-learn {sklearn.__version__}; "
        f"jax devices: {[str(d) for d in jax.devices()]}"
    )
    emit("load_avg_start", load_average())

    fit = jax.jit(
        functools.partial(kmeans, k=args.k, n_init=1, max_iter=args.max_iter, tol=abs_tol)
    )
    x_dev = jax.device_put(x)
    keys = [jax.random.key(s) for s in seeds]
    start = time.perf_counter()
    compiled = fit.lower(keys[0], x_dev).compile()
    emit("dmeta_compile_s", time.perf_counter() - start, "s")

    def sklearn_fit(seed: int):
        return KMeans(
            args.k,
            init="k-means++",
            n_init=1,
            max_iter=args.max_iter,
            tol=args.tol,
            algorithm="lloyd",
            random_state=seed,
        ).fit(x)

    ours = [jax.block_until_ready(compiled(key, x_dev)) for key in keys]
    theirs = [sklearn_fit(s) for s in seeds]
    ratios = [
        inertia64(x, a.centroids) / inertia64(x, b.cluster_centers_) for a, b in zip(ours, theirs)
    ]
    emit("sklearn_mean_iterations", float(np.mean([b.n_iter_ for b in theirs])))
    emit("inertia_ratio_min", min(ratios))
    emit("inertia_ratio_max", max(ratios))

    medians = interleaved_medians(
        {
            "dmeta": lambda: [jax.block_until_ready(compiled(key, x_dev)) for key in keys],
            "sklearn": lambda: [sklearn_fit(s) for s in seeds],
        },
        repeats,
        warmup=0,
    )
    per_fit = {name: seconds / args.seeds for name, seconds in medians.items()}
    emit("dmeta_fit_s", per_fit["dmeta"], "s")
    emit("sklearn_fit_s", per_fit["sklearn"], "s")
    emit("load_avg_end", load_average())
    emit("inertia_ratio_vs_sklearn", float(np.mean(ratios)))
    emit("speedup_vs_sklearn", per_fit["sklearn"] / per_fit["dmeta"])
    emit.save(args.out)


if __name__ == "__main__":
    main()
