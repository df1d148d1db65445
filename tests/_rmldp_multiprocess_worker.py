"""Worker of tests/test_multiprocess.py's RMLDP check: meta-training with ``train.strata``.

    python tests/_rmldp_multiprocess_worker.py --strata 2            # one process
    python tests/_rmldp_multiprocess_worker.py --coordinator localhost:PORT \
        --num-processes 2 --process-id I                            # one of several

Builds the smoke RMLDP context on tiny synthetic data, then with ``train.strata`` (default:
one stratum per process) and the data-parallel mesh of every device of every process:
draws ``N_DRAWS`` meta-batches with the stratified sampler, runs ``N_STEPS`` meta-steps of
RMLDP from one state and ``train_meta`` (early stopping on the meta-validation MSE, all
segments in every process). Prints one JSON line: the process, its devices, the segments of
its strata, the segments it fed to its devices, every step's meta-loss, the final and the
``train_meta`` Theta (flattened leaves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dmeta import distributed  # noqa: E402
from dmeta.parallel import data_mesh  # noqa: E402
from dmeta.rmldp import baselines as fb  # noqa: E402
from dmeta.rmldp.config import get_config  # noqa: E402
from dmeta.rmldp.protocol import (  # noqa: E402
    context,
    load_data,
    meta_runner,
    strata_sampler,
    train_meta,
)
from dmeta.train.state import init_train_state  # noqa: E402
from experiments.benchmarks._multiprocess import add_cluster_args, join  # noqa: E402

N_DRAWS, N_STEPS = 3, 3
HP = dict(inner_steps=1, inner_lr=3e-2, meta_lr=3e-3)


def config(strata: int):
    """The smoke config: 4 tasks per meta-batch, 4 meta-steps (evaluated every 2)."""
    cfg = get_config(smoke=True)
    train = dataclasses.replace(
        cfg.train, n_tasks=4, meta_steps=4, eval_every=2, patience=None, strata=strata
    )
    return dataclasses.replace(cfg, train=train)


def leaves(tree) -> list[list[float]]:
    return [np.ravel(x).tolist() for x in jax.tree.leaves(distributed.to_host(tree))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strata", type=int)
    add_cluster_args(parser)
    args = parser.parse_args()
    info = join(args)
    cfg = config(args.strata or info.process_count)
    ctx = context(load_data("synthetic", cfg), cfg, seq_len=cfg.protocol.seq_len)
    runner = meta_runner("RMLDP", ctx, HP["inner_steps"])
    sample = strata_sampler(ctx.prep, cfg.train, data_mesh())
    fed = []
    for i in range(N_DRAWS):
        batch = sample(jax.random.key(i))
        fed += [int(s) for x in batch.segment.addressable_shards for s in np.asarray(x.data)]
    key = jax.random.key(1)
    inner_lr = jnp.float32(HP["inner_lr"])
    state = init_train_state(runner.init(key, HP["inner_lr"]), fb.adam(HP["meta_lr"]), key)
    losses = []
    for _ in range(N_STEPS):
        state, metrics = runner.step(state, inner_lr, jnp.float32(cfg.train.lam))
        losses.append(float(distributed.to_host(metrics["loss"])))
    theta = train_meta(runner, ctx, jax.random.key(2), HP)
    strata = distributed.Strata.split(len(ctx.prep.train), cfg.train.strata)
    line = dict(
        dataclasses.asdict(info),
        segments=ctx.prep.train[strata.rows()].tolist(),
        fed=fed,
        losses=losses,
        params=leaves(state.params),
        trained=leaves(theta),
    )
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
