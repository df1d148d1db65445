"""Data parallelism over all visible devices with ``jax.sharding`` (JAX's SPMD partitioner).

One 1-D mesh with axis ``"data"``; parameters and optimizer state are replicated, the
leading task / batch axis of the data is split over the devices, and XLA inserts the
gradient all-reduce. The same step function runs on one device (a mesh of 1) and on many:

    mesh = data_mesh()                                  # all visible devices
    step = data_parallel(train_step, mesh, batch_argnums=(1,))
    state, metrics = step(state, batch)                 # batch: leaves [B, ...], B % n == 0

Steps that draw their batch inside the jitted function (from a replicated pool) call
``constrain_batch`` on the drawn batch instead of sharding an argument. ``jit_step`` is
the one entry point modules use: plain ``jax.jit`` without a mesh, ``data_parallel`` with.
The mesh axes are ``AxisType.Auto`` (GSPMD-style propagation): shardings live on the
arguments, results and constraints, not in the array types, so model code is unchanged.

Multi-device on CPU: ``use_host_devices(n)`` (``dmeta run --host-devices N``), i.e.
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, before JAX initializes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"


def use_host_devices(n: int) -> None:
    """Makes JAX's CPU backend show ``n`` devices (``--xla_force_host_platform_device_count``),
    e.g. one per core, so that a data-parallel step splits its batch over the cores. Call it
    before anything initializes the backend; JAX on a GPU keeps its devices.

    Raises:
      ValueError: the CPU backend was already initialized with another device count.
    """
    flag = f"--xla_force_host_platform_device_count={n}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if jax.default_backend() == "cpu" and jax.device_count() != n:
        raise ValueError(
            f"{n} host devices asked for, but JAX's CPU backend already runs with "
            f"{jax.device_count()}: set them before any JAX computation"
        )


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``n_devices`` visible devices (all)."""
    devices = jax.devices()
    n = len(devices) if n_devices is None else n_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"n_devices={n_devices}, but {len(devices)} device(s) are visible")
    return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, leading_axis: int = 0) -> NamedSharding:
    """Axis ``leading_axis`` split over ``"data"``, the other axes whole on each device."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axis), DATA))


def check_divisible(tree: Any, mesh: Mesh, leading_axis: int = 0) -> None:
    """Raises ValueError unless axis ``leading_axis`` of every leaf divides by the mesh size."""
    n = mesh.shape[DATA]
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = jnp.shape(leaf)
        if len(shape) <= leading_axis or shape[leading_axis] % n:
            size = shape[leading_axis] if len(shape) > leading_axis else "missing"
            raise ValueError(
                f"cannot split axis {leading_axis} (size {size}) of batch leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} (shape {shape}) over {n} devices "
                f"of mesh axis {DATA!r}: make the batch a multiple of {n}"
            )


def _place_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.core.Tracer):  # traced (e.g. jax.eval_shape of the step)
        return jax.lax.with_sharding_constraint(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: reshard
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put(tree, sharding)``, also when the mesh spans several processes: then
    every process passes the same whole value and puts the parts its own devices hold."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _place_leaf(x, sharding), tree)


def shard_batch(tree: Any, mesh: Mesh, leading_axis: int = 0) -> Any:
    """``place`` with axis ``leading_axis`` of every leaf split over ``"data"``."""
    check_divisible(tree, mesh, leading_axis)
    return place(tree, batch_sharded(mesh, leading_axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``place`` of a full copy of every leaf on every device of ``mesh``."""
    return place(tree, replicated(mesh))


def constrain_batch(tree: Any, mesh: Mesh, leading_axis: int = 0) -> Any:
    """Inside ``jit``: ask the partitioner to split axis ``leading_axis`` over ``"data"``.

    For batches drawn inside the step (the inputs they come from stay replicated).
    """
    check_divisible(tree, mesh, leading_axis)
    return jax.lax.with_sharding_constraint(tree, batch_sharded(mesh, leading_axis))


def sharded_jit(
    step: Callable,
    mesh: Mesh,
    n_args: int,
    *,
    batch_argnums: Sequence[int] = (),
    leading_axis: int = 0,
    out_shardings: Any = None,
    donate_argnums: int | Sequence[int] = (),
) -> Any:
    """The ``jax.jit`` object of ``step`` with the batch arguments sharded, the rest replicated.

    Takes arguments already placed (``shard_batch`` / ``replicate``); ``.lower(*args)``
    gives the ahead-of-time program (for example to compile with ``compiler_options``).

    Args:
      step: a pure function of ``n_args`` positional arguments.
      mesh: from ``data_mesh``.
      n_args: how many positional arguments ``step`` is called with.
      batch_argnums: positional arguments whose leaves are split on ``leading_axis``.
      leading_axis: the task / batch axis of the batch arguments.
      out_shardings: a ``NamedSharding`` (or pytree prefix of them) for the results;
        default replicated.
      donate_argnums: as in ``jax.jit``.
    """
    return jax.jit(
        step,
        in_shardings=_in_shardings(mesh, n_args, tuple(batch_argnums), leading_axis),
        out_shardings=replicated(mesh) if out_shardings is None else out_shardings,
        donate_argnums=donate_argnums,
    )


def _in_shardings(
    mesh: Mesh, n_args: int, batch_argnums: tuple[int, ...], leading_axis: int
) -> tuple[NamedSharding, ...]:
    return tuple(
        batch_sharded(mesh, leading_axis) if i in batch_argnums else replicated(mesh)
        for i in range(n_args)
    )


def data_parallel(
    step: Callable,
    mesh: Mesh,
    *,
    batch_argnums: Sequence[int] = (),
    leading_axis: int = 0,
    out_shardings: Any = None,
    donate_argnums: int | Sequence[int] = (),
) -> Callable:
    """``sharded_jit`` of ``step`` that also places its arguments.

    Args:
      step: a pure function of positional arguments only.
      mesh: from ``data_mesh``.
      batch_argnums: positional arguments whose leaves are split on ``leading_axis``
        (their size there must divide by the device count); the others are replicated.
      leading_axis: the task / batch axis of the batch arguments.
      out_shardings: a ``NamedSharding`` (or pytree prefix of them) for the results;
        default replicated.
      donate_argnums: as in ``jax.jit``.

    Returns:
      ``fn(*args)``: places the arguments (a no-op when already in place; a clear error
      when a batch does not divide), then runs the compiled SPMD program.
    """
    batch_argnums = tuple(batch_argnums)
    compiled: dict[int, Callable] = {}

    def fn(*args):
        n = len(args)
        if n not in compiled:
            compiled[n] = sharded_jit(
                step,
                mesh,
                n,
                batch_argnums=batch_argnums,
                leading_axis=leading_axis,
                out_shardings=out_shardings,
                donate_argnums=donate_argnums,
            )
        for i in batch_argnums:
            check_divisible(args[i], mesh, leading_axis)
        shardings = _in_shardings(mesh, n, batch_argnums, leading_axis)
        args = tuple(place(a, sh) for a, sh in zip(args, shardings, strict=True))
        return compiled[n](*args)

    fn.__wrapped__ = step
    return fn


def jit_step(
    step: Callable,
    mesh: Mesh | None = None,
    *,
    batch_argnums: Sequence[int] = (),
    out_shardings: Any = None,
    donate_argnums: int | Sequence[int] = (),
) -> Callable:
    """``jax.jit(step)`` without a mesh, ``data_parallel(step, mesh, ...)`` with one.

    The one code path of the modules' ``shard`` flags (``batch_argnums`` and
    ``out_shardings`` only apply with a mesh).
    """
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return data_parallel(
        step,
        mesh,
        batch_argnums=batch_argnums,
        out_shardings=out_shardings,
        donate_argnums=donate_argnums,
    )
