"""Step-numbered pytree checkpoints on orbax-checkpoint, plus the run's ``config.json``.

Layout::

    directory/
      config.json      # the run's configuration (``dataclasses.asdict(cfg)``)
      <step>/          # one orbax checkpoint per saved step, at most ``max_to_keep``

Saves are synchronous and atomic (orbax writes to a temporary folder and renames
it), so a process killed mid-save leaves the previous checkpoint intact; the
temporary folder is removed when the directory is next opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dmeta import distributed

PyTree = Any

CONFIG_FILE = "config.json"


def save_config(directory: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Writes ``config`` as ``directory/config.json`` (indented, keys sorted); returns the path.

    Values that JSON cannot hold (paths, tuples of dataclasses, ...) are written as ``str``.
    """
    path = Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Reads ``directory/config.json``."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def _abstract(leaf: Any) -> Any:
    # orbax handles 0-d ndarrays but not numpy scalar types such as np.float64(1.0).
    return ocp.utils.to_shape_dtype_struct(
        np.asarray(leaf) if isinstance(leaf, np.generic) else leaf
    )


def _multi_process() -> bool:
    return jax.process_count() > 1


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host_tree(tree: PyTree) -> PyTree:
    """Numpy copies, keys as their key data: in a multi-process run orbax writes numpy
    arrays from process 0 but cannot write process-local ``jax.Array``s."""
    return jax.tree.map(
        lambda x: distributed.to_host(jax.random.key_data(x) if _is_key(x) else x), tree
    )


def _rewrap_key(target: Any, restored: Any) -> Any:
    return (
        jax.random.wrap_key_data(restored, impl=jax.random.key_impl(target))
        if _is_key(target)
        else restored
    )


class Checkpointer:
    """Saves and restores one pytree per step (e.g. ``{"state": TrainState, "best": ...}``).

    Usage::

        with Checkpointer(run_dir, max_to_keep=3, config=asdict(cfg)) as ckpt:
            ckpt.save(step, {"state": state, "early_stop": es})
            tree = ckpt.restore({"state": state, "early_stop": es})  # latest step

    Any pytree of jax/numpy arrays and Python scalars works, including registered
    dataclasses such as ``TrainState`` and typed PRNG keys; restore returns the
    structure, dtypes and leaf types of its ``target``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        config: dict[str, Any] | None = None,
    ):
        """Opens (creating if needed) a checkpoint directory.

        Args:
          directory: folder holding the step folders and ``config.json``.
          max_to_keep: keep only the most recent this many steps (``None``: keep all).
          config: if given, written to ``directory/config.json`` (overwriting).
        """
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(self.directory, config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, tree: PyTree) -> bool:
        """Saves ``tree`` as step ``step``; returns whether a checkpoint was written.

        Saving a step that already exists is a no-op returning ``False``.
        """
        if step in self._manager.all_steps():
            return False
        if _multi_process():
            tree = _host_tree(tree)
        return self._manager.save(int(step), args=ocp.args.StandardSave(tree))

    def restore(self, target: PyTree, step: int | None = None) -> PyTree:
        """Restores step ``step`` (default: the latest) into the structure of ``target``.

        Args:
          target: a pytree like the saved one (concrete arrays or ``jax.ShapeDtypeStruct``);
            its structure, shapes and dtypes define the result.
          step: which step; ``None`` for the latest.

        Raises:
          FileNotFoundError: no checkpoint (for that step) in the directory.
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
        if _multi_process():
            tree = self._manager.restore(step, args=ocp.args.StandardRestore(_host_tree(target)))
            return jax.tree.map(_rewrap_key, target, tree)
        abstract = jax.tree.map(_abstract, target)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def latest_step(self) -> int | None:
        """The most recent saved step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All kept steps, ascending."""
        return sorted(self._manager.all_steps())

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
