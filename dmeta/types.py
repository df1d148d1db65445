"""Shared array aliases and the task containers the meta-learning engine consumes.

Shape legend used across docstrings: ``T`` tasks (segments), ``N`` samples,
``S`` time steps of a window, ``F`` features.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

Array = jax.Array
Params = Any  # a pytree of arrays
Key = jax.Array  # a PRNG key


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Split:
    """A padded set of MPFN samples (one task's support or query set).

    Leading axes may be added (e.g. ``[T, ...]`` for a batch of tasks).

    Attributes:
      x_local: f32[N, S, F] the |T_c| records ending at the current time t_c.
      x_season: f32[N, S, F] the |T_c| records ending one season before the
        target (t_l = t_c + T_g - season).
      y: f32[N] scaled target demand (RMLDP Definition 2).
      mask: f32[N] 1 for a real sample, 0 for padding.
    """

    x_local: Array
    x_season: Array
    y: Array
    mask: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaskBatch:
    """A batch of meta-learning tasks, one per segment.

    Attributes:
      support: Split with leaves shaped [T, N_s, ...] (inner-loop data).
      query: Split with leaves shaped [T, N_q, ...] (outer-loop data).
      segment: i32[T] segment index of each task (for graph embeddings).
    """

    support: Split
    query: Split
    segment: Array
