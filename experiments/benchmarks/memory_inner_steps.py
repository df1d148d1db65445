"""Peak memory of the RMLDP meta-step against the number of inner steps, with and without remat.

Second-order MAML keeps every inner step's activations for the backward pass through the
inner loop, so memory grows with the inner steps; ``remat=True`` wraps each inner step in
``jax.checkpoint`` (``dmeta.meta.inner``) and recomputes them instead. For inner steps 1..10
this compiles the library's meta-step (``dmeta.rmldp.model.make_train_step``, Table 1 shapes,
a meta-batch of ``--segments`` segments, ``vmap``) both ways and prints XLA's buffer
assignment (arguments + outputs - donated + temporaries: the peak the step needs, the same
figure on any backend), the device's ``peak_bytes_in_use`` where reported (GPU), and the median
step time, so the memory saved and the compute paid are side by side. Both variants must give
the same meta-loss (they compute the same function). Last line:
``remat_memory_ratio_at_<max steps>: X`` (remat peak over plain peak; < 1: remat saves).

    .venv/bin/python experiments/benchmarks/memory_inner_steps.py \
        --out experiments/results/benchmarks/memory_inner_steps.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from dmeta.config import override
from dmeta.rmldp.config import get_config
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    machine,
)
from experiments.benchmarks.rmldp_segments import (
    FEATURES,
    QUICK_FEATURES,
    CompileCounter,
    Runner,
    device_peak_mib,
)

STEPS = tuple(range(1, 11))
QUICK_STEPS = (1, 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke shapes, inner steps 1 and 3")
    parser.add_argument("--segments", type=int, default=16, help="segments per meta-batch")
    parser.add_argument("--steps", type=str, default=None, help="comma-separated inner steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    base = get_config(smoke=args.quick, size="paper")
    n_features = QUICK_FEATURES if args.quick else FEATURES
    steps = QUICK_STEPS if args.quick else STEPS
    if args.steps:
        steps = tuple(sorted(int(s) for s in args.steps.split(",")))
    segments = 2 if args.quick else args.segments
    repeats = args.repeats or (1 if args.quick else 3)
    emit = Report()

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: S={base.protocol.seq_len}, F={n_features}, H={base.model.hidden}, encoder "
        f"H={base.model.encoder_hidden}, {base.train.n_support}+{base.train.n_query} samples, {segments} segments "
        f"(vmap), second order, inner steps {list(steps)}, repeats={repeats}"
    )
    emit(f"machine: {machine()}; jax devices: {[str(d) for d in jax.devices()]}")
    emit(f"versions: jax {jax.__version__}, numpy {np.__version__}")
    emit("load_avg_start", load_average())
    graph_emb = jax.random.normal(jax.random.key(args.seed + 3), (segments, base.model.graph_dim))
    counter = CompileCounter()
    table = [
        "| inner steps | XLA peak plain (MiB) | XLA peak remat (MiB) | remat / plain "
        "| step plain (s) | step remat (s) | device peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratio = 1.0
    for n in steps:
        cfg = override(base, [f"tuning.meta.inner_steps={n}"])
        runners = {
            name: Runner(
                cfg, n_features, graph_emb, segments, "vmap", counter, seed=args.seed, remat=remat
            )
            for name, remat in (("plain", False), ("remat", True))
        }
        losses = {name: float(r()["loss"]) for name, r in runners.items()}
        if not np.isclose(losses["plain"], losses["remat"], rtol=1e-4):
            raise SystemExit(f"inner steps {n}: remat changed the meta-loss {losses}")
        seconds = interleaved_medians(runners, repeats, warmup=0)
        mib = {name: r.xla_mib for name, r in runners.items()}
        ratio = mib["remat"] / mib["plain"]
        peak = device_peak_mib()
        for name in runners:
            emit(f"steps{n}_{name}_xla_peak_mib", mib[name], "MiB")
            emit(f"steps{n}_{name}_step_s", seconds[name], "s")
        table.append(
            f"| {n} | {mib['plain']:.4g} | {mib['remat']:.4g} | {ratio:.3f} "
            f"| {seconds['plain']:.3g} | {seconds['remat']:.3g} "
            f"| {'n/a' if peak is None else f'{peak:.0f}'} |"
        )
    emit("")
    for line in table:
        emit(line)
    emit("")
    emit("load_avg_end", load_average())
    emit(f"remat_memory_ratio_at_{steps[-1]}", ratio)
    emit.save(args.out)


if __name__ == "__main__":
    main()
