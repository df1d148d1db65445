"""Worker of tests/test_multiprocess.py: data-parallel MAML meta-train steps on a tiny MPFN.

    python tests/_multiprocess_worker.py OUT_DIR                       # one process
    python tests/_multiprocess_worker.py OUT_DIR --coordinator localhost:PORT \
        --num-processes 2 --process-id I                               # one of several

Every step draws the same deterministic meta-batch of ``N_TASKS`` tasks (numpy, seeded by the
step); each process keeps only its ``process_shard`` of the tasks and the global batch is built
with ``jax.make_array_from_process_local_data``. After ``CKPT_AT`` steps process 0 writes a
checkpoint (``write_once``), every process restores it and the run continues: the final
parameters and per-step losses must equal a single-process run of ``N_STEPS`` straight steps.
Process 0 alone writes ``OUT_DIR/result.json``; every process prints one JSON line
(``wrote``: whether it wrote anything).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_TASKS, N_STEPS, CKPT_AT = 8, 4, 2
F, S, N_SUPPORT, N_QUERY, HIDDEN = 2, 4, 3, 3, 4


def task_batch(step: int):
    """The full meta-batch of ``step`` (numpy), identical on every process."""
    import numpy as np

    from dmeta.types import Split, TaskBatch

    rng = np.random.default_rng(1000 + step)

    def split(n):
        mask = np.ones((N_TASKS, n), np.float32)
        mask[:, -1] = 0.0
        return Split(
            rng.normal(size=(N_TASKS, n, S, F)).astype(np.float32),
            rng.normal(size=(N_TASKS, n, S, F)).astype(np.float32),
            rng.normal(size=(N_TASKS, n)).astype(np.float32),
            mask,
        )

    return TaskBatch(split(N_SUPPORT), split(N_QUERY), np.arange(N_TASKS, dtype=np.int32))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args()

    import time

    t0 = time.perf_counter()
    from dmeta import distributed

    info = distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax
    import numpy as np
    import optax
    from flax import nnx

    from dmeta.meta.maml import init_meta_params, make_maml_task_loss
    from dmeta.meta.steps import make_meta_train_step
    from dmeta.models.mpfn import MPFN, split_loss
    from dmeta.nn.functional import split_params
    from dmeta.parallel import data_mesh, data_parallel
    from dmeta.train.state import TrainState, init_train_state

    mesh = data_mesh()  # all devices of all processes
    import inspect

    # the plain lax.scan GRU wherever MPFN offers several implementations
    impl = {"gru_impl": "scan"} if "gru_impl" in inspect.signature(MPFN).parameters else {}
    apply, theta = split_params(MPFN(F, HIDDEN, **impl, rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    task_loss = make_maml_task_loss(functools.partial(split_loss, apply), steps=1, step_size=0.1)
    step = data_parallel(make_meta_train_step(task_loss, optimizer), mesh, batch_argnums=(1,))

    def as_global(state_host):
        """Host (numpy) state, identical on every process -> replicated global arrays."""
        params, opt_state, n, key = state_host
        return TrainState(
            distributed.replicate_global(params, mesh),
            distributed.replicate_global(opt_state, mesh),
            distributed.replicate_global(n, mesh),
            jax.random.wrap_key_data(distributed.replicate_global(key, mesh)),
        )

    def to_host(state):
        return distributed.to_host(
            (state.params, state.opt_state, state.step, jax.random.key_data(state.key))
        )

    state = init_train_state(init_meta_params(theta), optimizer, jax.random.key(2))
    state = as_global(to_host(state))
    rows = distributed.process_shard(N_TASKS)
    losses, wrote = [], []
    ckpt = args.out / "ckpt.npz"
    for i in range(N_STEPS):
        local = jax.tree.map(lambda a: a[rows], task_batch(i))
        batch = distributed.global_batch(local, mesh)
        state, metrics = step(state, batch, state.key)
        losses.append(float(distributed.to_host(metrics["loss"])))
        if i + 1 == CKPT_AT:  # checkpoint on process 0, restore everywhere
            host = to_host(state)
            leaves, treedef = jax.tree.flatten(host)
            wrote.append(
                distributed.write_once(
                    ckpt,
                    lambda p, lv=leaves: np.savez(p, *lv),  # noqa: B023
                )
            )
            with np.load(ckpt) as f:
                loaded = [f[f"arr_{k}"] for k in range(len(leaves))]
            state = as_global(jax.tree.unflatten(treedef, loaded))

    params = distributed.to_host(state.params)
    result = {
        "losses": losses,
        "params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(params)],
        "process_count": info.process_count,
        "global_devices": info.global_devices,
        "written_by": info.process_index,
    }
    wrote.append(
        distributed.write_once(args.out / "result.json", lambda p: p.write_text(json.dumps(result)))
    )
    print(
        json.dumps(
            {
                "process": info.process_index,
                "local_devices": info.local_devices,
                "global_devices": info.global_devices,
                "rows": [rows.start, rows.stop],
                "wrote": any(wrote),
                "losses": losses,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        ),
        flush=True,
    )
    distributed.shutdown()


if __name__ == "__main__":
    main()
