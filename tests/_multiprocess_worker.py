"""Worker of tests/test_multiprocess.py: data-parallel MAML meta-train steps on a tiny MPFN.

    python tests/_multiprocess_worker.py OUT_DIR                       # one process
    python tests/_multiprocess_worker.py OUT_DIR --coordinator localhost:PORT \
        --num-processes 2 --process-id I                               # one of several

The trainer is the benchmark's (``experiments/benchmarks/_multiprocess.py``,
``DataParallelMaml``, here with the plain ``lax.scan`` GRU). Every step draws the same
deterministic meta-batch of ``N_TASKS`` tasks (numpy, seeded by the step); each process feeds
only its ``process_shard`` of the tasks. After ``CKPT_AT`` steps process 0 writes a checkpoint
(``write_once``), every process restores it and the run continues: the final parameters and
per-step losses must equal a single-process run of ``N_STEPS`` straight steps. Process 0 alone
writes ``OUT_DIR/result.json``; every process prints one JSON line (``wrote``: whether it
wrote anything).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dmeta import distributed  # noqa: E402
from dmeta.types import Split, TaskBatch  # noqa: E402
from experiments.benchmarks._multiprocess import (  # noqa: E402
    DataParallelMaml,
    add_cluster_args,
    join,
)

N_TASKS, N_STEPS, CKPT_AT = 8, 4, 2
F, S, N_SUPPORT, N_QUERY, HIDDEN = 2, 4, 3, 3, 4


def task_batch(step: int) -> TaskBatch:
    """The full meta-batch of ``step`` (numpy), identical on every process."""
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


def checkpoint_round_trip(trainer: DataParallelMaml, path: Path) -> bool:
    """Process 0 saves the state to ``path``, every process restores it; whether this one wrote."""
    leaves, treedef = jax.tree.flatten(trainer.host_state())
    wrote = distributed.write_once(path, lambda p: np.savez(p, *leaves))
    with np.load(path) as f:
        loaded = [f[f"arr_{k}"] for k in range(len(leaves))]
    trainer.state = trainer.as_global(jax.tree.unflatten(treedef, loaded))
    return wrote


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    add_cluster_args(parser)
    args = parser.parse_args()
    t0 = time.perf_counter()
    info = join(args)
    trainer = DataParallelMaml(F, HIDDEN, step_size=0.1, learning_rate=1e-2, gru_impl="scan")
    losses, wrote = [], []
    for i in range(N_STEPS):
        losses.append(trainer.step(task_batch(i)))
        if i + 1 == CKPT_AT:
            wrote.append(checkpoint_round_trip(trainer, args.out / "ckpt.npz"))

    params = distributed.to_host(trainer.state.params)
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
    rows = distributed.process_shard(N_TASKS)
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
