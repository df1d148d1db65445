"""TSUR's train step with its GAT over projected neighbours and in the input space.

``dmeta.ltv.tsur.GraphEncoder`` attends over each sample's 2-hop tree. Projecting every
node of the tree first (``W h`` for the k first-hop and k^2 second-hop neighbours, then
layer 2's projection of the k + 1 layer-1 outputs: the code before) forms
``f32[B, k, k + 1, heads, h]``; the default attends in the input space
(``GATLayer.attend_inputs``: the same values up to float rounding). This times the jitted
loss-and-gradient of the whole TSUR model on one training minibatch for both, interleaved
repeats, medians; before timing, the two gradients must agree within ``--rtol`` of the
largest. The last line is ``speedup_input_space_vs_projected``.

    .venv/bin/python experiments/benchmarks/tsur_step.py --data completejourney \
        --out experiments/results/benchmarks/tsur_step.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.ltv import data as ltv_data
from dmeta.ltv import tsur as T
from dmeta.ltv.config import get_config
from dmeta.ltv.protocol import load_data
from dmeta.ltv.train import model_batch
from dmeta.nn.functional import split_params
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    machine,
    report_step_speedup,
)


def projected(self: T.GraphEncoder, x, nbr, nbr2):
    """``GraphEncoder.__call__`` as before: every node of the tree projected, then attended."""
    table = self.layer1.project(jax.lax.stop_gradient(self.nodes[...]))  # [M, H, O]
    p0, p1, p2 = self.layer1.project(x), table[nbr], table[nbr2]
    h0 = self.layer1(p0, jnp.concatenate([p0[:, None], p1], 1))
    h1 = self.layer1(p1, jnp.concatenate([p1[:, :, None], p2], 2))
    q0 = self.layer2.project(h0.reshape(h0.shape[0], -1))
    q1 = self.layer2.project(h1.reshape(h1.shape[:2] + (-1,)))
    return self.layer2(q0, jnp.concatenate([q0[:, None], q1], 1)).mean(-2)


def grad_fn(arch: tuple, graph_call):
    """Jitted ``(params, batch) -> (loss, grads)`` with ``GraphEncoder.__call__`` =
    ``graph_call`` while tracing."""
    loss_fn = T._tsur_fns(arch, 0.03, 0.01)[0]
    value_and_grad = jax.value_and_grad(lambda p, b: loss_fn(p, b, None)[0])

    def traced(params, batch):
        saved, T.GraphEncoder.__call__ = T.GraphEncoder.__call__, graph_call
        try:
            return value_and_grad(params, batch)
        finally:
            T.GraphEncoder.__call__ = saved

    return jax.jit(traced)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", help="synthetic or completejourney")
    parser.add_argument("--hidden", type=int, default=128, help="the paper's size")
    parser.add_argument("--batch", type=int, default=256, help="the paper's batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of 5 steps")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    cfg = get_config(size="cpu" if args.quick else "paper")
    if args.quick:
        args.hidden, args.batch, args.repeats = 8, 32, 1

    name, data = load_data(args.data, cfg)
    train = ltv_data.split_customers(ltv_data.apply_sparsity(data, 0.0, 0), 0)[0]
    b = cfg.baselines.tsur_kwargs()
    graph = T.CustomerGraph.build(train, b["neighbours"])
    length = T.padded_length(train.t_series.shape[1], b["levels"])
    arch = (args.hidden, length, graph.features.shape[1], b["channels"], b["levels"],
            b["filter_len"], b["heads"], b["clusters"], b["cluster_dim"])  # fmt: skip
    params = split_params(T._model(arch, graph.standardize(graph.features), 0))[1]
    rows = np.arange(args.batch) % train.n
    full = {**model_batch(train, 1.0, float(train.t_y.mean())), **graph.arrays(train)}
    batch = {k: jnp.asarray(v[rows]) for k, v in full.items()}

    report = Report()
    report("command: " + " ".join(["python", *sys.argv]))
    report(f"machine: {machine()}")
    report(f"load: {load_average()}")
    report(f"data: {name}, {train.n} training samples, {graph.features.shape[1]} node features")
    report(f"shape: hidden {args.hidden}, batch {args.batch}, {b['neighbours']} neighbours, "
           f"{b['heads']} heads")  # fmt: skip

    steps = {
        "projected": grad_fn(arch, projected),
        "input_space": grad_fn(arch, T.GraphEncoder.__call__),
    }
    out = {k: step(params, batch) for k, step in steps.items()}
    leaves = [jax.tree.leaves(g) for _, g in out.values()]
    scale = max(float(np.max(np.abs(x))) for x in leaves[0])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*leaves, strict=True)) / scale
    report("loss_projected", float(out["projected"][0]))
    report("loss_input_space", float(out["input_space"][0]))
    report("grad_max_rel_diff", diff)
    if diff > args.rtol:
        raise SystemExit(f"the contenders disagree: gradients differ by {diff:.2e} of the largest")

    def run(name: str):
        def five_steps():
            for _ in range(5):
                jax.block_until_ready(steps[name](params, batch))

        return five_steps

    medians = interleaved_medians({name: run(name) for name in steps}, args.repeats)
    report_step_speedup(
        report, medians, per_round=5, name="speedup_input_space_vs_projected",
        slow="projected", fast="input_space",
    )  # fmt: skip
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
