"""STMP's train step with its short LSTMs run as a while loop and unrolled.

STMP's jump-LSTM runs 4-step chains (a 28-day window cut by the 7-day period) and its
recent-days LSTM 7 steps; ``dmeta.nn.rnn`` unrolls sequences of at most
``UNROLL_MAX_STEPS`` steps. This times the whole jitted train step
(``dmeta.stmp.train.make_train_step``, the experiment's default objective and task mix) with
``UNROLL_MAX_STEPS = 0`` (every recurrence a ``lax.scan`` loop, the code before) and with
the default (8), interleaved repeats, medians. Before timing, one step of each from the
same state must agree: the loss and every updated parameter within ``--rtol`` (the same
operations, summed in another order).
The last line is ``speedup_unrolled_vs_loop``.

    .venv/bin/python experiments/benchmarks/stmp_step.py --data favorita \
        --out experiments/results/benchmarks/stmp_step.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path

import jax
import numpy as np

import dmeta.nn.rnn as rnn
from dmeta.stmp import config as C
from dmeta.stmp import model as M
from dmeta.stmp import protocol as P
from dmeta.stmp import train as T
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    machine,
    report_step_speedup,
)


def build_step(graphdef, cfg: C.STMPConfig, unroll_max: int):
    """The jitted train step traced with ``rnn.UNROLL_MAX_STEPS = unroll_max``."""
    options = dataclasses.asdict(cfg.train)
    options["weighting"] = options.pop("query_weights")  # renamed as ``protocol.fit_stmp`` does
    accepted = inspect.signature(T.make_train_step).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    optimizer = T.adam(cfg.train.lr, cfg.train.n_steps, cfg.train.ema)
    jitted = jax.jit(T.make_train_step(graphdef, optimizer, **kwargs))

    def traced(state, arrays, index):
        saved, rnn.UNROLL_MAX_STEPS = rnn.UNROLL_MAX_STEPS, unroll_max
        try:
            return jitted(state, arrays, index)
        finally:
            rnn.UNROLL_MAX_STEPS = saved

    return traced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", help="synthetic, favorita, rossmann")
    parser.add_argument("--hidden", type=int, default=64, help="Favorita's tuned choice")
    parser.add_argument("--n-tasks", type=int, default=32, help="Favorita's tuned choice")
    parser.add_argument("--n-context", type=int, default=16, help="Favorita's tuned choice")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of 10 steps")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.n_tasks, args.n_context, args.repeats = 8, 4, 8, 1

    cfg = C.get_config(smoke=args.quick)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, hidden=args.hidden),
        train=dataclasses.replace(cfg.train, n_tasks=args.n_tasks, n_context=args.n_context),
    )
    _, data = P.load_panel(args.data, cfg.data)
    prep = P.split(data, cfg, "full", False)
    graphdef, params = M.build(
        **dataclasses.asdict(cfg.model), period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions),
        seed=0,
    )  # fmt: skip
    report = Report()
    report("command: " + " ".join(["python", *sys.argv]))
    report(f"machine: {machine()}")
    report(f"load: {load_average()}")
    report(f"data: {args.data}, {prep.data.y.shape[0]} regions x {prep.data.y.shape[1]} days")
    report(f"shape: hidden {args.hidden}, {args.n_tasks} tasks x {cfg.train.n_query} queries, "
           f"{args.n_context} context points")  # fmt: skip

    steps = {"loop": build_step(graphdef, cfg, 0), "unrolled": build_step(graphdef, cfg, 8)}
    state0 = T.init_train_state(params, T.adam(cfg.train.lr, cfg.train.n_steps), jax.random.key(0))
    after = {name: step(state0, prep.arrays, prep.index) for name, step in steps.items()}
    loss = {name: float(m["loss"]) for name, (_, m) in after.items()}
    leaves = [jax.tree.leaves(s.params) for s, _ in after.values()]
    diff = max(
        float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
        for a, b in zip(*leaves, strict=True)
    )
    report("one_step_loss_loop", loss["loop"])
    report("one_step_loss_unrolled", loss["unrolled"])
    report("one_step_params_max_rel_diff", diff)
    if diff > args.rtol or abs(loss["loop"] - loss["unrolled"]) > args.rtol * abs(loss["loop"]):
        raise SystemExit(f"the contenders disagree after one step (params {diff:.2e})")

    states = {name: state0 for name in steps}

    def run(name: str):
        def ten_steps():
            state = states[name]
            for _ in range(10):
                state, _ = steps[name](state, prep.arrays, prep.index)
            states[name] = jax.block_until_ready(state)

        return ten_steps

    medians = interleaved_medians({name: run(name) for name in steps}, args.repeats)
    report_step_speedup(
        report, medians, per_round=10, name="speedup_unrolled_vs_loop", slow="loop", fast="unrolled"
    )
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
