"""Multi-process runs on JAX's distributed runtime (several hosts, or several processes on one).

One process per host (or per accelerator group); every process runs the same program. The
1-D ``"data"`` mesh of ``dmeta.parallel.data_mesh()`` then spans the devices of *all*
processes (``jax.devices()`` is global after ``initialize``), parameters stay replicated and
the task / batch axis is split over every device of every process. Each process reads only
its share of the input (``process_shard``) and the global batch is assembled without any
host ever holding it whole (``global_batch``, ``jax.make_array_from_process_local_data``).
Results and checkpoints are written once, by process 0 (``is_main_process``,
``write_once``).

    from dmeta import distributed
    info = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = data_mesh()                                   # all devices of all processes
    users = all_users[distributed.process_shard(len(all_users))]
    batch = distributed.global_batch(local_batch, mesh)  # leaves [B_local * P, ...]
    state, metrics = step(state, batch)                  # dmeta.parallel.data_parallel step
    distributed.write_once(out / "results.json", lambda p: p.write_text(...))

``initialize`` must run before anything touches a JAX backend (before ``jax.devices()``).
Without arguments it honours the environment: ``JAX_COORDINATOR_ADDRESS`` (with
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, or JAX's own cluster detection for the rest) and
the cluster schedulers JAX auto-detects (Slurm, Open MPI, multi-host Cloud TPU); with none of
these it is a no-op and the run stays one process. On CPU the cross-process collectives use
Gloo (``jax_cpu_collectives_implementation``), which is what the 2-process test runs on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dmeta.parallel import batch_sharded, replicated

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed itself
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"  # our convention (JAX reads only the address)
ENV_PROCESS_ID = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: index, count, and devices (local / global)."""

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def _multi_process_cluster() -> bool:
    """A scheduler JAX auto-detects says this job has several processes."""
    env = os.environ
    if (
        int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1
        and "SLURM_JOB_ID" in env
    ):
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    return "," in hosts


_initialized = False


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str = "gloo",
    timeout_s: int = 300,
) -> ProcessInfo:
    """Joins (or, for process 0, starts) the distributed runtime; a no-op for one process.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordinator service (the CLI's
        ``--coordinator``); default ``$JAX_COORDINATOR_ADDRESS``.
      num_processes, process_id: ``--num-processes`` / ``--process-id``; default
        ``$JAX_NUM_PROCESSES`` / ``$JAX_PROCESS_ID``, else JAX's cluster detection.
      local_device_ids: devices this process uses (default all visible ones).
      cpu_collectives: implementation of cross-process collectives on CPU (``"gloo"``; JAX
        has no CPU collectives across processes without it).
      timeout_s: how long to wait for all processes to join.

    Returns:
      ``ProcessInfo`` (process 0 of 1 when nothing asks for several processes).
    """
    global _initialized
    env = os.environ
    coordinator = coordinator or env.get(ENV_COORDINATOR)
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    explicit = coordinator is not None or (num_processes or 1) > 1
    if not _initialized and (explicit or _multi_process_cluster()):
        if num_processes == 1 and process_id in (None, 0) and coordinator is None:
            return process_info()
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=timeout_s,
        )
        _initialized = True
        info = process_info()
        log.info(
            "process %d of %d: %d local / %d global devices",
            info.process_index,
            info.process_count,
            info.local_devices,
            info.global_devices,
        )
        return info
    return process_info()


def shutdown() -> None:
    """Leaves the distributed runtime (only needed before a process starts another run)."""
    global _initialized
    if _initialized:
        jax.distributed.shutdown()
        _initialized = False


def process_info() -> ProcessInfo:
    return ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )


def is_main_process() -> bool:
    """True on process 0 (the one that writes results, reports and checkpoints)."""
    return jax.process_index() == 0


def process_shard(
    n_items: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """This process's contiguous block of ``n_items`` (users, segments, regions, shards).

    Blocks are balanced (sizes differ by at most one, the first ``n_items % P`` processes
    get the larger ones), disjoint, and cover ``range(n_items)`` in order, so the process-p
    block of a batch axis is exactly what ``global_batch`` places on process p's devices
    when ``n_items`` divides by P.
    """
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if not 0 <= p < n:
        raise ValueError(f"process_index={p} outside [0, {n})")
    base, extra = divmod(n_items, n)
    start = p * base + min(p, extra)
    return slice(start, start + base + (p < extra))


def process_indices(
    n_items: int, process_index: int | None = None, process_count: int | None = None
) -> np.ndarray:
    """``process_shard`` as an index array."""
    return np.arange(n_items)[process_shard(n_items, process_index, process_count)]


def global_batch(local: Any, mesh: Mesh, leading_axis: int = 0) -> Any:
    """Global arrays whose axis ``leading_axis`` concatenates every process's ``local`` leaves.

    Each process passes only its own rows (``[B / P, ...]``, the same shape on every
    process); the result has leaves ``[B, ...]`` split over the ``"data"`` axis of
    ``mesh`` and can be fed to a ``dmeta.parallel.data_parallel`` step as is. With one
    process this is ``shard_batch``.
    """
    sharding = batch_sharded(mesh, leading_axis)
    n_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def put(path, leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim <= leading_axis or leaf.shape[leading_axis] % n_local:
            raise ValueError(
                f"local batch leaf {jax.tree_util.keystr(path) or '<root>'} (shape "
                f"{leaf.shape}) cannot split axis {leading_axis} over this process's "
                f"{n_local} devices"
            )
        shape = list(leaf.shape)
        shape[leading_axis] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, leaf, tuple(shape))

    return jax.tree_util.tree_map_with_path(put, local)


def replicate_global(tree: Any, mesh: Mesh) -> Any:
    """Host values identical on every process -> arrays replicated on all devices of ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree
    )


def to_host(tree: Any) -> Any:
    """Numpy copies of (replicated or sharded) global arrays, the same on every process."""

    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(get, tree)


def sync(name: str = "dmeta") -> None:
    """Barrier: returns once every process has reached it (no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def write_once(path: Path, write: Callable[[Path], Any], *, barrier: bool = True) -> bool:
    """Runs ``write(path)`` on process 0 only; returns whether this process wrote.

    With ``barrier`` the other processes wait until the file exists (so a resume or a report
    step that follows may read it on any process sharing the file system).
    """
    wrote = False
    if is_main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write(Path(path))
        wrote = True
    if barrier:
        sync(f"write_once:{path}")
    return wrote
