"""Data-parallel MAML over several JAX processes: launcher, trainer and the benchmark's worker.

Shared by ``multiprocess_throughput.py`` and ``tests/test_multiprocess.py`` (whose worker,
``tests/_multiprocess_worker.py``, adds a checkpoint round trip).

Parent side: ``launch_group`` starts P processes of a worker script with D simulated CPU
devices each (``JAX_PLATFORMS=cpu``, ``XLA_FLAGS=--xla_force_host_platform_device_count=D``),
on JAX's distributed runtime with a localhost coordinator on a free port when P > 1;
``finish`` waits for them and reads the JSON line each prints last.

Worker side: ``add_cluster_args`` / ``join`` (``dmeta.distributed.initialize`` from the
command line; before anything touches a JAX backend) and ``DataParallelMaml``: second-order
MAML meta-train steps of an MPFN, data-parallel over every device of every process, each
process feeding only its ``process_shard`` of the tasks (``dmeta.distributed.global_batch``).

Run as a script, this is the benchmark's worker: it times ``--repeats`` meta-steps at a
``maml_throughput`` shape after a warm-up step and prints one JSON line (losses of every step,
warm-up seconds, the timed steps' seconds):

    python experiments/benchmarks/_multiprocess.py --tasks 32 ... [--coordinator HOST:PORT \
        --num-processes P --process-id I]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from dmeta import distributed
from dmeta.meta.maml import init_meta_params, make_maml_task_loss
from dmeta.meta.steps import make_meta_train_step
from dmeta.models.mpfn import MPFN, split_loss
from dmeta.nn.functional import split_params
from dmeta.parallel import data_mesh, data_parallel
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import TaskBatch
from experiments.benchmarks.maml_throughput import LEARNING_RATE, STEP_SIZE, Shape, make_batch

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- parent side


def free_port() -> int:
    """A TCP port free on localhost right now (for the coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Worker:
    """A started worker process; its stdout and stderr go to temporary files."""

    proc: subprocess.Popen
    stdout: Any
    stderr: Any

    def output(self) -> tuple[str, str]:
        """Its stdout and stderr so far."""
        texts = []
        for f in (self.stdout, self.stderr):
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]


def launch_group(
    script: Path,
    args: Sequence[str],
    processes: int,
    devices: int,
    env: dict[str, str] | None = None,
) -> list[Worker]:
    """Starts ``processes`` copies of ``python SCRIPT ARGS`` with ``devices`` CPU devices each.

    With several processes each gets ``--coordinator localhost:PORT --num-processes P
    --process-id I`` (``add_cluster_args``). ``JAX_*`` variables of this process are not
    passed on; ``env`` adds to the workers' environment.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    environ.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **(env or {}),
    )
    cluster = [[]]
    if processes > 1:
        coordinator = f"localhost:{free_port()}"
        cluster = [
            [
                "--coordinator",
                coordinator,
                "--num-processes",
                str(processes),
                "--process-id",
                str(i),
            ]
            for i in range(processes)
        ]
    workers = []
    for extra in cluster:
        out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
        command = [sys.executable, str(script), *args, *extra]
        proc = subprocess.Popen(command, env=environ, cwd=ROOT, stdout=out, stderr=err, text=True)
        workers.append(Worker(proc, out, err))
    return workers


def finish(workers: list[Worker], timeout: float) -> list[dict]:
    """The JSON object each worker printed last, once all have exited successfully.

    Raises:
      RuntimeError: a worker failed or they ran past ``timeout`` seconds (all are then
        killed; the message ends with the failed one's stderr).
    """
    deadline = time.monotonic() + timeout
    results = []
    try:
        for w in workers:
            try:
                w.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"worker timed out:\n{w.output()[1][-3000:]}") from None
            stdout, stderr = w.output()
            if w.proc.returncode != 0:
                raise RuntimeError(f"worker exited {w.proc.returncode}:\n{stderr[-4000:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.stdout.close()
            w.stderr.close()
    return results


# ----------------------------------------------------------------------------- worker side


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` (absent: one process)."""
    parser.add_argument("--coordinator", help="HOST:PORT of process 0's coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def join(args: argparse.Namespace) -> distributed.ProcessInfo:
    """Joins the distributed runtime the command line names (a no-op for one process)."""
    return distributed.initialize(args.coordinator, args.num_processes, args.process_id)


class DataParallelMaml:
    """Second-order MAML meta-train steps of an MPFN over all devices of all processes.

    One inner SGD step, Adam outer step; parameters and optimizer state replicated, the task
    axis split over the ``"data"`` mesh of every device of every process.

    Args:
      features: F, MPFN input features.
      hidden: H, GRU state size.
      step_size: inner-loop SGD step size.
      learning_rate: Adam's learning rate.
      gru_impl: MPFN's GRU implementation (``"fused"``, its default, or ``"scan"``).
      seed: model initialization (``nnx.Rngs(seed)``) and the state's key.
      donate: donate the state to the step (updated in place).
    """

    def __init__(
        self,
        features: int,
        hidden: int,
        *,
        step_size: float,
        learning_rate: float,
        gru_impl: str = "fused",
        seed: int = 0,
        donate: bool = False,
    ):
        self.mesh = data_mesh()  # all devices of all processes
        apply, theta = split_params(MPFN(features, hidden, gru_impl=gru_impl, rngs=nnx.Rngs(seed)))
        optimizer = optax.adam(learning_rate)
        task_loss = make_maml_task_loss(
            functools.partial(split_loss, apply), steps=1, step_size=step_size
        )
        self._step = data_parallel(
            make_meta_train_step(task_loss, optimizer),
            self.mesh,
            batch_argnums=(1,),
            donate_argnums=0 if donate else (),
        )
        state = init_train_state(init_meta_params(theta), optimizer, jax.random.key(seed))
        self.state = self.as_global(self.host_state(state))

    def as_global(self, host: tuple) -> TrainState:
        """``host_state``'s tuple (the same on every process) -> the replicated global state."""
        params, opt_state, step, key = distributed.replicate_global(host, self.mesh)
        return TrainState(params, opt_state, step, jax.random.wrap_key_data(key))

    def host_state(self, state: TrainState | None = None) -> tuple:
        """Numpy ``(params, opt_state, step, key data)`` of ``state`` (default: the current)."""
        state = self.state if state is None else state
        return distributed.to_host(
            (state.params, state.opt_state, state.step, jax.random.key_data(state.key))
        )

    def step(self, full: TaskBatch) -> float:
        """One meta-train step on the meta-batch ``full`` (numpy leaves ``[T, ...]``, the same
        on every process), of which this process feeds only its ``process_shard``; returns
        the meta-loss (mean query loss), once the step is done."""
        rows = distributed.process_shard(len(full.segment))
        local = jax.tree.map(lambda a: np.asarray(a)[rows], full)
        batch = distributed.global_batch(local, self.mesh)
        self.state, metrics = self._step(self.state, batch, self.state.key)
        return float(distributed.to_host(metrics["loss"]))


def benchmark_worker(argv: list[str] | None = None) -> None:
    """The benchmark's worker: a warm-up step, ``--repeats`` timed steps, one JSON line."""
    parser = argparse.ArgumentParser()
    for field in dataclasses.fields(Shape):
        parser.add_argument(f"--{field.name}", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--gru", default="fused")
    parser.add_argument("--seed", type=int, default=0)
    add_cluster_args(parser)
    args = parser.parse_args(argv)
    info = join(args)
    shape = Shape(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)})
    full = jax.tree.map(np.asarray, make_batch(shape, args.seed + 1))
    start = time.perf_counter()  # warm-up: build, compile, first step
    trainer = DataParallelMaml(
        shape.features,
        shape.hidden,
        step_size=STEP_SIZE,
        learning_rate=LEARNING_RATE,
        gru_impl=args.gru,
        seed=args.seed,
        donate=True,
    )
    losses = [trainer.step(full)]
    warmup_s, step_s = time.perf_counter() - start, []
    for _ in range(args.repeats):
        start = time.perf_counter()
        losses.append(trainer.step(full))
        step_s.append(time.perf_counter() - start)
    rows = distributed.process_shard(shape.tasks)
    line = dict(
        dataclasses.asdict(info),
        rows=[rows.start, rows.stop],
        losses=losses,
        warmup_s=warmup_s,
        step_s=step_s,
    )
    print(json.dumps(line), flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    benchmark_worker()
