"""DeepWalk: dmeta's JAX skip-gram against gensim's Word2Vec on the same walks, one run.

The graph has planted communities (dense within, sparse between). The walks are drawn once with
``dmeta.graph.deepwalk.random_walks``; both learners then train skip-gram with negative sampling
on them: dmeta's ``train_skipgram`` (Adam over random minibatches of (center, context) pairs in
one jitted ``lax.scan``) and gensim's ``Word2Vec(sg=1)`` (its compiled SGD over the walks as
sentences of node tokens), with the same dimension, window (gensim's ``shrink_windows=False``
to match dmeta's full window), negatives, noise exponent 3/4, no subsampling and the same number
of epochs (dmeta's steps x batch = epochs x pairs). dmeta's step is compiled ahead and the
compile reported separately (``dmeta_compile_s``); gensim's time covers its vocabulary build and
training. Repeats are interleaved and medians reported, with the load average, because the CPU
is shared. Quality of both embeddings: community accuracy (5-fold cross-validated logistic
regression on the L2-normalized embeddings) and the silhouette of the communities. One line per
figure (``name: value unit``); the last line is ``speedup_vs_gensim: X`` (gensim's time over
dmeta's).

    .venv/bin/python experiments/benchmarks/deepwalk_vs_gensim.py \
        --out experiments/results/benchmarks/deepwalk_vs_gensim.txt
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.graph.deepwalk import random_walks, train_skipgram
from dmeta.metrics import silhouette
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    require,
)


def planted_partition(
    communities: int, size: int, p_in: float, p_out: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 0/1 links f32[I, I] (zero diagonal), I = communities x size, and labels i32[I].

    A pair is linked with probability ``p_in`` inside a community and ``p_out`` across.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(communities, dtype=np.int32), size)
    p = np.where(labels[:, None] == labels[None, :], p_in, p_out)
    upper = np.triu(rng.random(p.shape) < p, k=1)
    return (upper | upper.T).astype(np.float32), labels


def community_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(5-fold logistic-regression accuracy, silhouette) of the communities in the L2-normalized
    embeddings ``emb: f[I, D]``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    accuracy = cross_val_score(LogisticRegression(max_iter=1000), z, labels, cv=5).mean()
    return float(accuracy), float(silhouette(z, labels))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``; ``--quick`` replaces the graph and training sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--communities", type=int, default=4)
    parser.add_argument("--size", type=int, default=250, help="nodes per community")
    parser.add_argument("--p-in", type=float, default=0.05)
    parser.add_argument("--p-out", type=float, default=0.005)
    parser.add_argument("--walks-per-node", type=int, default=10)
    parser.add_argument("--walk-length", type=int, default=40)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negative", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024, help="dmeta pairs per step")
    parser.add_argument("--learning-rate", type=float, default=0.02, help="dmeta Adam rate")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="gensim threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per contender")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.p_in, args.p_out = 20, 0.4, 0.01
        args.walks_per_node, args.walk_length, args.dim, args.window = 5, 10, 8, 2
        args.epochs, args.batch_size = 2, 128
    return args


def emit_header(emit: Report, args, gensim, links: int, n_pairs: int, steps: int, repeats: int):
    """The report's first lines: command, graph and training sizes, versions, load."""
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"graph: {args.communities} communities x {args.size} nodes, p_in={args.p_in}, "
        f"p_out={args.p_out}, {links} links; walks: {args.walks_per_node} per "
        f"node, length {args.walk_length}; skip-gram: dim={args.dim}, window={args.window}, "
        f"negative={args.negative}, epochs={args.epochs} ({n_pairs} pairs each; dmeta "
        f"{steps} Adam steps x {args.batch_size}, lr {args.learning_rate}); gensim "
        f"workers={args.workers}; repeats={repeats}"
    )
    emit(
        f"versions: jax {jax.__version__}, gensim {gensim.__version__}; "
        f"jax devices: {[str(d) for d in jax.devices()]}"
    )
    emit("load_avg_start", load_average())


def timed_walks(emit: Report, args, key, weights: np.ndarray) -> jax.Array:
    """The random walks i32[I * walks_per_node, walk_length], timed after a warm-up call."""
    walk = functools.partial(
        random_walks, walks_per_node=args.walks_per_node, walk_length=args.walk_length
    )
    w_dev = jnp.asarray(weights)
    jax.block_until_ready(walk(key, w_dev))
    start = time.perf_counter()
    walks = jax.block_until_ready(walk(key, w_dev))
    emit("walks_s", time.perf_counter() - start, "s")
    return walks


def compiled_skipgram(emit: Report, args, key, walks, n_nodes: int, steps: int):
    """dmeta's skip-gram training, jitted and compiled (the compile timed)."""
    train = jax.jit(
        functools.partial(
            train_skipgram,
            n_nodes=n_nodes,
            dim=args.dim,
            window=args.window,
            n_negative=args.negative,
            steps=steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
        )
    )
    start = time.perf_counter()
    compiled = train.lower(key, walks).compile()
    emit("dmeta_compile_s", time.perf_counter() - start, "s")
    return compiled


def gensim_fit(args, sentences: list[list[str]]):
    """gensim's skip-gram with negative sampling on the same walks and settings."""
    from gensim.models import Word2Vec

    return Word2Vec(
        sentences,
        vector_size=args.dim,
        window=args.window,
        min_count=1,
        sample=0,
        sg=1,
        hs=0,
        negative=args.negative,
        ns_exponent=0.75,
        epochs=args.epochs,
        workers=args.workers,
        seed=args.seed,
        shrink_windows=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Times dmeta's and gensim's DeepWalk on one graph, scores both, prints the report."""
    args = parse_args(argv)
    gensim = require("gensim")
    repeats = args.repeats or (1 if args.quick else 3)
    emit = Report()
    weights, labels = planted_partition(
        args.communities, args.size, args.p_in, args.p_out, seed=args.seed
    )
    n_nodes = weights.shape[0]
    n_walks = n_nodes * args.walks_per_node
    n_pairs = 2 * n_walks * sum(args.walk_length - d for d in range(1, args.window + 1))
    steps = math.ceil(args.epochs * n_pairs / args.batch_size)
    emit_header(emit, args, gensim, int(weights.sum()) // 2, n_pairs, steps, repeats)

    k_walk, k_train = jax.random.split(jax.random.key(args.seed))
    walks = timed_walks(emit, args, k_walk, weights)
    sentences = [[str(node) for node in row] for row in np.asarray(walks).tolist()]
    compiled = compiled_skipgram(emit, args, k_train, walks, n_nodes, steps)
    last = {}  # each contender's latest fit, scored below
    fits = {
        "dmeta": lambda: last.update(dmeta=jax.block_until_ready(compiled(k_train, walks))),
        "gensim": lambda: last.update(gensim=gensim_fit(args, sentences)),
    }
    medians = interleaved_medians(fits, repeats, warmup=0)
    emit("dmeta_train_s", medians["dmeta"], "s")
    emit("gensim_train_s", medians["gensim"], "s")
    emb, losses = last["dmeta"]
    emit("dmeta_final_loss", float(jnp.mean(losses[-max(1, steps // 20) :])))
    ours = community_scores(np.asarray(emb), labels)
    theirs = community_scores(last["gensim"].wv[[str(i) for i in range(n_nodes)]], labels)
    for name, (accuracy, sil) in (("dmeta", ours), ("gensim", theirs)):
        emit(f"{name}_community_accuracy", accuracy)
        emit(f"{name}_silhouette", sil)
    emit("load_avg_end", load_average())
    emit("speedup_vs_gensim", medians["gensim"] / medians["dmeta"])
    emit.save(args.out)


if __name__ == "__main__":
    main()
