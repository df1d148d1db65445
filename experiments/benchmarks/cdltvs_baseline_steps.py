"""Train steps of CDLtvS's two slowest baselines, each as it was and as it is now.

- TSUR (``dmeta.ltv.tsur``): its GAT attends over each sample's 2-hop tree. Projecting every
  node of the tree first (``W h`` for the k first-hop and k^2 second-hop neighbours, then
  layer 2's projection of the k + 1 layer-1 outputs: the code before) forms
  ``f32[B, k, k + 1, heads, h]``; now it attends in the input space
  (``GATLayer.attend_inputs``).
- PTUPCDR's meta stage (``dmeta.ltv.baselines.PTUPCDR``): the bridge ``W_u = dec2(r)`` of
  every customer as ``f32[B, h, h]`` and the frozen head on ``e^s W_u`` (before); now the
  head is folded into ``dec2`` first.

Each pair computes the same loss in another order: the jitted loss-and-gradient on one
training minibatch, interleaved repeats, medians; before timing, the two gradients must
agree within ``--rtol`` of the largest. Each pair's times end with its speed-up,
``speedup_tsur_input_space_vs_projected`` and (last) ``speedup_ptupcdr_folded_vs_bridge``.

    .venv/bin/python experiments/benchmarks/cdltvs_baseline_steps.py --data completejourney \
        --out experiments/results/benchmarks/cdltvs_baseline_steps.txt
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.ltv import baselines as B
from dmeta.ltv import data as ltv_data
from dmeta.ltv import tsur as T
from dmeta.ltv.config import get_config
from dmeta.ltv.encoders import output_relu
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


def bridged(self: B.PTUPCDR, b):
    """``PTUPCDR.__call__`` as before: every customer's bridge formed, then the head."""
    e_s, w = self.bridge(b)
    u = jnp.einsum("nh,nhk->nk", e_s, w)
    kernel = jax.lax.stop_gradient(self.tgt_head.kernel[...])
    bias = jax.lax.stop_gradient(self.tgt_head.bias[...])
    return output_relu(u @ kernel + bias)[..., 0]


@contextlib.contextmanager
def patched(cls: type, method: str, fn):
    """``cls.<method> = fn`` while the block runs (a tracing)."""
    saved = getattr(cls, method)
    setattr(cls, method, fn)
    try:
        yield
    finally:
        setattr(cls, method, saved)


def grad_fn(loss_fn, cls: type, method: str, fn):
    """Jitted ``(params, batch) -> (loss, grads)`` of ``loss_fn(params, batch, None)``, traced
    with ``cls.<method> = fn``."""
    value_and_grad = jax.value_and_grad(lambda p, b: loss_fn(p, b, None)[0])

    def traced(params, batch):
        with patched(cls, method, fn):
            return value_and_grad(params, batch)

    return jax.jit(traced)


def tsur_case(train: ltv_data.CrossDomainData, cfg, hidden: int, rows: np.ndarray):
    """(steps by name, params, batch) of TSUR's loss at ``hidden`` on the samples ``rows``."""
    b = cfg.baselines.tsur_kwargs()
    graph = T.CustomerGraph.build(train, b["neighbours"])
    length = T.padded_length(train.t_series.shape[1], b["levels"])
    arch = (hidden, length, graph.features.shape[1], b["channels"], b["levels"],
            b["filter_len"], b["heads"], b["clusters"], b["cluster_dim"])  # fmt: skip
    params = split_params(T._model(arch, graph.standardize(graph.features), 0))[1]
    loss_fn = T._tsur_fns(arch, b["wavelet_weight"], b["cluster_weight"])[0]
    full = {**model_batch(train, 1.0, float(train.t_y.mean())), **graph.arrays(train)}
    steps = {
        "tsur_projected": grad_fn(loss_fn, T.GraphEncoder, "__call__", projected),
        "tsur_input_space": grad_fn(loss_fn, T.GraphEncoder, "__call__", T.GraphEncoder.__call__),
    }
    return steps, params, {k: jnp.asarray(v[rows]) for k, v in full.items()}


def ptupcdr_case(train: ltv_data.CrossDomainData, cfg, hidden: int, rows: np.ndarray):
    """(steps by name, params, batch) of PTUPCDR's meta-stage loss at ``hidden``."""
    arch, meta_dim = B._arch(train, hidden), cfg.baselines.ptupcdr_meta_dim
    params = split_params(B._build(B.PTUPCDR, arch, 0, meta_dim=meta_dim))[1]
    loss_fn = B._ptupcdr_fns(arch, meta_dim)[-1][0]  # the meta stage
    full = model_batch(train, float(train.s_y.mean()), float(train.t_y.mean()))
    steps = {
        "ptupcdr_bridge": grad_fn(loss_fn, B.PTUPCDR, "__call__", bridged),
        "ptupcdr_folded": grad_fn(loss_fn, B.PTUPCDR, "__call__", B.PTUPCDR.__call__),
    }
    return steps, params, {k: jnp.asarray(v[rows]) for k, v in full.items()}


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
    rows = np.arange(args.batch) % train.n
    report = Report()
    report("command: " + " ".join(["python", *sys.argv]))
    report(f"machine: {machine()}")
    report(f"load: {load_average()}")
    report(f"data: {name}, {train.n} training samples")
    report(f"shape: hidden {args.hidden}, batch {args.batch}")

    medians = {}
    for case in (tsur_case, ptupcdr_case):
        steps, params, batch = case(train, cfg, args.hidden, rows)
        out = {k: step(params, batch) for k, step in steps.items()}
        (old, (loss_old, g_old)), (new, (loss_new, g_new)) = out.items()
        leaves = jax.tree.leaves(g_old), jax.tree.leaves(g_new)
        scale = max(float(np.max(np.abs(x))) for x in leaves[0])
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*leaves, strict=True)) / scale
        report(f"loss_{old}", float(loss_old))
        report(f"loss_{new}", float(loss_new))
        report(f"grad_max_rel_diff_{old.split('_')[0]}", diff)
        if diff > args.rtol:
            raise SystemExit(f"{old} and {new} disagree: gradients differ by {diff:.2e}")

        def run(step, params=params, batch=batch):
            def five_steps():
                for _ in range(5):
                    jax.block_until_ready(step(params, batch))

            return five_steps

        medians[old, new] = interleaved_medians({k: run(s) for k, s in steps.items()}, args.repeats)
    for (old, new), pair in medians.items():
        report_step_speedup(
            report, pair, per_round=5, name=f"speedup_{new}_vs_{old.split('_', 1)[1]}",
            slow=old, fast=new,
        )  # fmt: skip
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
