"""Multi-process runs on JAX's distributed runtime (several hosts, or several processes on one).

One process per host (or per accelerator group); every process runs the same program. The
1-D ``"data"`` mesh of ``dmeta.parallel.data_mesh()`` then spans the devices of *all*
processes (``jax.devices()`` is global after ``initialize``), parameters stay replicated and
the task / batch axis is split over every device of every process. Each process reads only
its share of the input (``process_shard``) and the global batch is assembled without any
host ever holding it whole (``global_batch``, ``jax.make_array_from_process_local_data``).
Results and checkpoints are written once, by process 0 (``is_main_process``,
``write_once``). Rows that each process reads itself (users of its sequence shards) are
``Strata``: stratified epochs of global batches, and per-row values gathered in one global
order, the same for any number of processes.

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


def allgather(tree: Any) -> Any:
    """Every process's host values stacked in process order: leaves ``[P, ...]`` (numpy, the
    same on every process; each process passes leaves of the same shapes)."""
    return multihost_utils.process_allgather(jax.tree.map(np.asarray, tree))


def _local_strata(n_strata: int) -> range:
    """This process's strata of ``n_strata`` (``process_shard``; S divisible by P)."""
    n_proc = jax.process_count()
    if n_strata % n_proc:
        raise ValueError(f"{n_strata} strata do not split evenly over {n_proc} processes")
    mine = process_shard(n_strata)
    return range(mine.start, mine.stop)


@dataclasses.dataclass(frozen=True)
class Strata:
    """Rows (users, segments) in S strata, each read and held by one process only.

    Process p of P holds the strata ``process_shard(S, p, P)`` (S divisible by P), and only
    their rows, stratum after stratum. The global row order is stratum 0's rows, then
    stratum 1's, ..., whatever P is. Every epoch (``order``) draws ``B / S`` rows of each
    stratum into every global batch of B, in stratum order, so process p's part of a batch
    is its own rows (``global_batch`` puts them on its devices), and one process holding all
    S strata builds the same global batches as S processes.

    Attributes:
      sizes: rows of every stratum (of all processes).
      local: the strata this process holds, in order.
    """

    sizes: tuple[int, ...]
    local: range

    @classmethod
    def of(cls, local_sizes: Sequence[int], n_strata: int) -> Strata:
        """The strata, from this process's stratum sizes (``len(process_shard(n_strata))`` of
        them); gathers every process's sizes (a collective: every process calls it)."""
        mine = _local_strata(n_strata)
        if len(local_sizes) != len(mine):
            raise ValueError(f"got {len(local_sizes)} stratum sizes for strata {mine}")
        sizes = allgather(np.asarray(local_sizes, np.int64)).reshape(-1)
        return cls(tuple(int(n) for n in sizes), mine)

    @classmethod
    def split(cls, n_rows: int, n_strata: int) -> Strata:
        """``n_rows`` rows that every process lists (e.g. segment indices) as ``n_strata``
        balanced contiguous strata (stratum s: ``process_shard(n_rows, s, n_strata)``); no
        collective."""
        sizes = tuple(
            len(range(n_rows)[process_shard(n_rows, s, n_strata)]) for s in range(n_strata)
        )
        return cls(sizes, _local_strata(n_strata))

    @property
    def offsets(self) -> np.ndarray:
        """i64[S + 1]: where each stratum starts in the global row order (and the total)."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    def rows(self) -> np.ndarray:
        """i64[N]: the global indices of this process's N rows, in its order."""
        return np.concatenate([np.arange(self.offsets[s], self.offsets[s + 1]) for s in self.local])

    def local_slices(self) -> list[slice]:
        """Each local stratum's block of this process's rows."""
        ends = np.cumsum([self.sizes[s] for s in self.local])
        return [slice(int(e - self.sizes[s]), int(e)) for s, e in zip(self.local, ends)]

    def steps(self, batch_size: int) -> int:
        """Batches per epoch: enough for every row of the largest stratum to be drawn."""
        if batch_size % len(self.sizes):
            raise ValueError(f"batch size {batch_size} does not divide by {len(self.sizes)} strata")
        per = batch_size // len(self.sizes)
        return -(-max(self.sizes) // per)

    def local_batch(self, batch_size: int) -> int:
        """B_local: this process's rows of a global batch of ``batch_size``."""
        return batch_size // len(self.sizes) * len(self.local)

    def order(self, key: jax.Array, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """One epoch's local batches: this process's rows i64[steps, B_local] (B_local =
        ``B / S`` per local stratum) and whether each is a first draw f32[steps, B_local].

        Stratum s is permuted by ``fold_in(key, s)``; a stratum smaller than the largest
        fills its later batches from the start of its permutation (real = 0).
        """
        steps, per = self.steps(batch_size), batch_size // len(self.sizes)
        draws = np.arange(steps * per)
        rows, real = [], []
        for s, block in zip(self.local, self.local_slices()):
            n = self.sizes[s]
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, s), n))
            rows.append((block.start + perm[draws % n]).reshape(steps, per))
            real.append((draws < n).astype(np.float32).reshape(steps, per))
        return np.concatenate(rows, axis=1), np.concatenate(real, axis=1)

    def gather(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Per-row values of every process, in the global order: ``f[U, ...]``, the same on
        every process, from this process's values per local stratum (``f[n_s, ...]``)."""
        first = np.asarray(parts[0])
        padded = np.zeros((len(parts), max(self.sizes), *first.shape[1:]), first.dtype)
        for block, part in zip(padded, parts, strict=True):
            block[: len(part)] = part
        stacked = allgather(padded).reshape(len(self.sizes), *padded.shape[1:])
        return np.concatenate([stacked[s, :n] for s, n in enumerate(self.sizes)])


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
