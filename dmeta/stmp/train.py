"""STMP training: (region, date type) tasks, ML-PIP objective, alternating spatial / temporal views.

A task is one cell (region r, date type d) with query targets from that cell, a
region context set (past days of r, any date type) and a date-type context set (past
days of type d, any region); context points sharing a date with a query target are
masked out. Views: 0 spatial (z_r sampled with its KL, z_d the stop-gradient
posterior mean), 1 temporal (the reverse), 2 joint (both sampled).

Objectives (``objective``): the ML-PIP Gaussian likelihood with a learned sigma (the
paper's form), with a fixed sigma, or the squared error of each latent sample's mean.
Query weights (``weighting``): "matched" weighs every query of a batch so festival and
regular queries carry the training calendar's festival share (the evaluation mix), "task"
averages each task's queries and then the tasks (a one-query festival task weighs as much
as sixteen regular queries).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dmeta.meta.steps import make_meta_train_step
from dmeta.parallel import constrain_batch, data_mesh, jit_step
from dmeta.stmp.data import Arrays, CellIndex, Prepared, uplift, window
from dmeta.stmp.model import bind, gaussian_kl, sample_latent
from dmeta.train import loop
from dmeta.train.averaging import averaged_params, param_average
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Key, Params

logger = logging.getLogger(__name__)

SPATIAL, TEMPORAL, JOINT = 0, 1, 2
Mode = Literal["alternate", "joint"]
Objective = Literal["learned_sigma", "fixed_sigma", "mse"]
Weighting = Literal["matched", "task"]
SpatialTypes = Literal["frequency", "uniform"]
ContextDays = Literal["any", "past"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Task:
    """One (region, date type) task; leaves get a leading [B] axis in a batch.

    Attributes:
      region: i32[] region r.
      date_type: i32[] date type d.
      days: i32[Q] query target days of cell (r, d).
      mask: f32[Q] 1 for real query targets.
      weight: f32[Q] each query's weight in the objective (0 on padding; see
        ``query_weights``), the mean over the batch's tasks of their sums being 1.
      region_ctx: i32[K] context days of region r.
      region_ctx_mask: f32[K].
      type_ctx: i32[K] context (region, day) pairs of type d, flattened ``r * D + t``.
      type_ctx_mask: f32[K].
      view: i32[] SPATIAL, TEMPORAL or JOINT.
      type_hidden: bool[] the task's date type is hidden (``hide_types``).
    """

    region: Array
    date_type: Array
    days: Array
    mask: Array
    weight: Array
    region_ctx: Array
    region_ctx_mask: Array
    type_ctx: Array
    type_ctx_mask: Array
    view: Array
    type_hidden: Array


def view_at(step: Array, *, mode: Mode, switch_every: int) -> Array:
    """The view of training step ``step``: alternating every ``switch_every`` steps, or JOINT."""
    if mode == "joint":
        return jnp.full((), JOINT, jnp.int32)
    if mode != "alternate":
        raise ValueError(f"mode must be 'alternate' or 'joint', got {mode!r}")
    return ((step // switch_every) % 2).astype(jnp.int32)


def cell_logits(index: CellIndex, view: Array, spatial_types: SpatialTypes = "frequency") -> Array:
    """Log-probabilities f32[R * Dt] of drawing each cell in ``view``.

    Spatial: regions uniform, date types by their frequency within the region
    ("frequency") or uniform among the region's ("uniform", so festival cells train the
    region encoder as often as in the temporal view). Temporal: date types uniform,
    regions uniform among those with the type. Joint: the average.
    """
    count = index.cell_count.astype(jnp.float32)
    present = (count > 0).astype(jnp.float32)
    if spatial_types not in ("frequency", "uniform"):
        raise ValueError(f"spatial_types must be 'frequency' or 'uniform', got {spatial_types!r}")
    within = count if spatial_types == "frequency" else present
    spatial = within / jnp.maximum(within.sum(1, keepdims=True), 1.0) / count.shape[0]
    per_type = present / jnp.maximum(present.sum(0, keepdims=True), 1.0)
    temporal = per_type / jnp.maximum(jnp.sum(present.any(0)), 1.0)
    prob = jnp.select([view == SPATIAL, view == TEMPORAL], [spatial, temporal],
                      0.5 * (spatial + temporal))  # fmt: skip
    return jnp.log(prob.ravel())


def region_context_days(
    key: Key,
    index: CellIndex,
    r: Array,
    d: Array,
    n_context: int,
    *,
    cell_limit: Array | None = None,
    before: Array | None = None,
) -> tuple[Array, Array]:
    """Context days of region r for a task of date type d: i32[B, K] and mask f32[B, K].

    Stratified: the first half comes from the task's own cell (r, d), the rest from
    any day of r, so the region posterior sees how r behaves on this date type. With
    ``cell_limit`` i32[B] the own-cell half draws from the cell's first ``cell_limit``
    days only, and with ``before`` i32[B] the other half keeps the days before it (past
    context, ``sample_tasks``' ``context_days="past"``).
    """
    k_cell, k_any = jax.random.split(key)
    half = n_context // 2
    limit = index.cell_count[r, d][:, None] if cell_limit is None else cell_limit[:, None]
    pick_c = jax.random.randint(k_cell, (r.shape[0], half), 0, limit)
    pick_a = jax.random.randint(
        k_any, (r.shape[0], n_context - half), 0, index.region_count[r][:, None]
    )
    any_days = index.region_days[r[:, None], pick_a]
    days = jnp.concatenate([index.cell_days[r[:, None], d[:, None], pick_c], any_days], axis=1)
    any_ok = jnp.broadcast_to((index.region_count[r] > 0)[:, None], pick_a.shape)
    if before is not None:
        any_ok = any_ok & (any_days < before[:, None])
    mask = jnp.concatenate([jnp.broadcast_to(limit > 0, pick_c.shape), any_ok], axis=1)
    return days, mask.astype(jnp.float32)


def query_weights(index: CellIndex, d: Array, mask: Array, weighting: Weighting) -> Array:
    """Weights f32[B, Q] of the queries of tasks of date types d i32[B] (mask f32[B, Q]).

    "matched": festival queries share ``index.festival_share`` of the batch's weight
    (regular ones the rest; a kind absent from the batch leaves all of it to the other),
    each query of a kind weighing the same. "task": each task's real queries share 1.
    Either way the weights sum to B over the batch.
    """
    if weighting == "task":
        return mask / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
    if weighting != "matched":
        raise ValueError(f"weighting must be 'matched' or 'task', got {weighting!r}")
    fest = index.festival_type[d][:, None] * mask
    n_fest, n_reg = jnp.sum(fest), jnp.sum(mask - fest)
    share = jnp.where(n_fest == 0, 0.0, jnp.where(n_reg == 0, 1.0, index.festival_share))
    per_query = jnp.where(fest > 0, share / jnp.maximum(n_fest, 1.0),
                          (1.0 - share) / jnp.maximum(n_reg, 1.0))  # fmt: skip
    return mask.shape[0] * per_query * mask


def sample_tasks(
    key: Key,
    index: CellIndex,
    view: Array,
    *,
    n_tasks: int,
    n_query: int,
    n_context: int,
    n_days: int,
    weighting: Weighting = "matched",
    spatial_types: SpatialTypes = "frequency",
    type_dropout: float = 0.0,
    context_days: ContextDays = "any",
) -> Task:
    """Draws a batch of ``n_tasks`` tasks for ``view`` (leaves [B, ...]; ``cell_logits``,
    ``query_weights``); a ``type_dropout`` share of the festival tasks get their date type
    hidden (``hide_types``).

    ``context_days``: "any" draws queries anywhere in their cell and context from every
    other training day; "past" cuts each task's cell at a random day (its first day
    excepted when it has two or more): queries from the cut on, every context day (region
    and date type) before the cut, as at test time, where context sets hold only days
    before the test period.
    """
    k_cell, k_q, k_r, k_d = jax.random.split(key, 4)
    n_types = index.cell_count.shape[1]
    logits = cell_logits(index, view, spatial_types)
    cell = jax.random.categorical(k_cell, logits, shape=(n_tasks,))
    r, d = cell // n_types, cell % n_types
    count = index.cell_count[r, d][:, None]
    if context_days == "any":
        pick_q = jax.random.randint(k_q, (n_tasks, n_query), 0, count)
        # at most half a cell's draws are queries, so rare festivals keep dates for context
        n_q, cut, before = jnp.maximum(count // 2, 1), None, None
    elif context_days == "past":
        u = jax.random.uniform(jax.random.fold_in(key, 2), (n_tasks, 1))
        cut = jnp.where(count >= 2, 1 + jnp.floor(u * (count - 1)).astype(jnp.int32), 0)
        pick_q = jax.random.randint(k_q, (n_tasks, n_query), cut, count)
        n_q, before = jnp.maximum(count - cut, 1), index.cell_days[r, d, cut[:, 0]]
        cut = cut[:, 0]
    else:
        raise ValueError(f"context_days must be 'any' or 'past', got {context_days!r}")
    mask = (jnp.arange(n_query)[None, :] < n_q).astype(jnp.float32)
    days = jnp.where(mask > 0, index.cell_days[r[:, None], d[:, None], pick_q], -1)
    region_ctx, region_mask = region_context_days(
        k_r, index, r, d, n_context, cell_limit=cut, before=before
    )
    pick_d = jax.random.randint(k_d, (n_tasks, n_context), 0, index.type_count[d][:, None])
    type_ctx = index.type_pairs[d[:, None], pick_d]
    type_ok = jnp.broadcast_to(index.type_count[d][:, None] > 0, type_ctx.shape)
    if before is not None:
        type_ok = type_ok & (type_ctx % n_days < before[:, None])

    def not_query(ctx_days):  # [B, K] -> f32[B, K]
        return (~jnp.any(ctx_days[:, :, None] == days[:, None, :], axis=-1)).astype(jnp.float32)

    task = Task(
        region=r,
        date_type=d,
        days=days,
        mask=mask,
        weight=query_weights(index, d, mask, weighting),
        region_ctx=region_ctx,
        region_ctx_mask=not_query(region_ctx) * region_mask,
        type_ctx=type_ctx,
        type_ctx_mask=not_query(type_ctx % n_days) * type_ok,
        view=jnp.broadcast_to(view, (n_tasks,)),
        type_hidden=jnp.zeros((n_tasks,), bool),
    )
    if type_dropout == 0.0:  # no draw: the key stream of runs without the option is kept
        return task
    draw = jax.random.bernoulli(jax.random.fold_in(key, 1), type_dropout, (n_tasks,))
    return hide_types(task, draw & (index.festival_type[d] > 0))


def hide_types(task: Task, hide: Array) -> Task:
    """``task`` (leaves [B, ...]) with the date type of the tasks where ``hide`` bool[B] is
    set hidden as it is at test time for a type without known targets: an empty date-type
    context set, none of the region context's own-cell half (``region_context_days``) and
    the type's one-hot input off (``predict_cell``). The other half's days may still have
    the type; for a festival type they rarely do."""
    half = task.region_ctx.shape[1] // 2
    own_cell = jnp.arange(task.region_ctx.shape[1]) < half
    keep = ~(hide[:, None] & own_cell[None, :])
    return dataclasses.replace(
        task,
        region_ctx_mask=task.region_ctx_mask * keep,
        type_ctx_mask=task.type_ctx_mask * ~hide[:, None],
        type_hidden=hide,
    )


def region_context(arrays: Arrays, r: Array, days: Array, *, period: int, n_types: int) -> Array:
    """Region context points f32[K, 2 + Dt]: (scaled y, uplift, one-hot date type)."""
    up = jax.vmap(lambda t: uplift(arrays, r, t, period))(days)
    onehot = jax.nn.one_hot(arrays.dtype[r, days], n_types)
    return jnp.concatenate([arrays.ys[r, days][:, None], up[:, None], onehot], axis=-1)


def type_context(arrays: Arrays, pairs: Array, *, period: int) -> Array:
    """Date-type context points f32[K, 2 + A]: (scaled y, uplift, region attributes)."""
    n_days = arrays.ys.shape[1]
    r, t = pairs // n_days, pairs % n_days
    up = jax.vmap(lambda ri, ti: uplift(arrays, ri, ti, period))(r, t)
    return jnp.concatenate([arrays.ys[r, t][:, None], up[:, None], arrays.attrs[r]], axis=-1)


def predict_cell(
    model, arrays: Arrays, r: Array, days: Array, z_r: Array, z_d: Array, type_hidden=False
):
    """Predictions for targets (r, days[q]) given latents z f32[S, Z]; ``type_hidden``
    (bool[]) turns the one-hot date-type input off, as for an unseen type under
    ``protocol.unseen_types = "zero"``.

    Returns:
      mean f32[S, Q] and log sigma f32[S, Q] of the scaled target.
    """
    x = jax.vmap(lambda t: window(arrays, r, t, model.window))(days)
    attrs = jnp.broadcast_to(arrays.attrs[r], (days.shape[0], arrays.attrs.shape[1]))
    type_in = jnp.where(type_hidden, -1, arrays.type_input[r, days])
    baseline, fused = model.features(x, arrays.dow[days], arrays.month[days], type_in, attrs)
    n_samples = z_r.shape[0]
    fused = jnp.broadcast_to(fused, (n_samples,) + fused.shape)
    z_r = jnp.broadcast_to(z_r[:, None], fused.shape[:2] + z_r.shape[-1:])
    z_d = jnp.broadcast_to(z_d[:, None], fused.shape[:2] + z_d.shape[-1:])
    baseline = jnp.broadcast_to(baseline, fused.shape[:-1])
    return model.generate(baseline, fused, z_r, z_d)


def query_loss(y: Array, mean: Array, log_sigma: Array, objective: Objective, sigma: float):
    """Per-query loss f32[Q] of targets y f32[Q] under latent samples' mean / log sigma f32[S, Q].

    "learned_sigma" / "fixed_sigma": ML-PIP's -log mean_s N(y; mean_s, sigma_s^2) with the
    head's sigma or the constant ``sigma``; "mse": mean_s (y - mean_s)^2.
    """
    if objective == "mse":
        return jnp.mean(jnp.square(y - mean), axis=0)
    if objective == "fixed_sigma":
        log_sigma = jnp.full_like(mean, jnp.log(sigma))
    elif objective != "learned_sigma":
        raise ValueError(f"objective must be learned_sigma, fixed_sigma or mse, got {objective!r}")
    ll = -0.5 * jnp.square((y - mean) / jnp.exp(log_sigma)) - log_sigma - 0.5 * jnp.log(2 * jnp.pi)
    return -(jax.nn.logsumexp(ll, axis=0) - jnp.log(mean.shape[0]))


def make_task_loss(
    graphdef: nnx.GraphDef,
    arrays: Arrays,
    *,
    n_samples: int,
    beta: float,
    objective: Objective = "learned_sigma",
    sigma: float = 0.1,
) -> Callable[[Params, Task, Key], tuple[Array, dict[str, Array]]]:
    """Task loss: the task's queries' losses (``query_loss``) summed with their weights, plus
    beta * KL.

    The latent of the view's side is sampled (reparameterized) and pays its KL to
    N(0, I); the other side uses its posterior mean with gradients stopped. A fixed sigma
    or the squared error keeps rare festival targets from buying a wide sigma instead of
    a good mean.
    """

    def task_loss(params: Params, task: Task, key: Key):
        model = bind(graphdef, params)
        period, n_types = model.period, model.n_types
        r, d = task.region, task.date_type
        rctx = region_context(arrays, r, task.region_ctx, period=period, n_types=n_types)
        tctx = type_context(arrays, task.type_ctx, period=period)
        mu_r, lv_r, s_r = model.region_side(rctx, task.region_ctx_mask, arrays.attrs[r], r, d)
        mu_d, lv_d, s_d = model.type_side(tctx, task.type_ctx_mask, d)
        k_r, k_d = jax.random.split(key)
        sample_r, sample_d = task.view != TEMPORAL, task.view != SPATIAL

        def side(k, mu, lv, summary, on):  # -> f32[S, Z (+ G * H)], KL f32[]
            z = jnp.where(on, sample_latent(k, mu, lv, n_samples), jax.lax.stop_gradient(mu))
            summary = jnp.where(on, summary, jax.lax.stop_gradient(summary))
            kl = jnp.zeros(()) if lv is None else jnp.where(on, gaussian_kl(mu, lv), 0.0)
            return jnp.concatenate(
                [z, jnp.broadcast_to(summary, (n_samples, summary.size))], -1
            ), kl

        z_r, kl_r = side(k_r, mu_r, lv_r, s_r, sample_r)
        z_d, kl_d = side(k_d, mu_d, lv_d, s_d, sample_d)
        mean, log_sigma = predict_cell(model, arrays, r, task.days, z_r, z_d, task.type_hidden)
        y = arrays.ys[r, task.days]
        fit = jnp.sum(query_loss(y, mean, log_sigma, objective, sigma) * task.weight)
        kl = kl_r + kl_d
        sq = jnp.square(jnp.mean(mean, axis=0) - y)
        mse = jnp.sum(sq * task.mask) / jnp.maximum(jnp.sum(task.mask), 1.0)
        return fit + beta * kl, {"fit": fit, "kl": kl, "mse": mse}

    return task_loss


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    mode: Mode = "alternate",
    switch_every: int = 50,
    n_tasks: int = 32,
    n_query: int = 16,
    n_context: int = 32,
    n_samples: int = 4,
    beta: float = 1e-2,
    objective: Objective = "learned_sigma",
    sigma: float = 0.1,
    weighting: Weighting = "matched",
    spatial_types: SpatialTypes = "frequency",
    type_dropout: float = 0.0,
    context_days: ContextDays = "any",
    remat: bool = False,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Arrays, CellIndex], tuple[TrainState, dict[str, Array]]]:
    """``step(state, arrays, index) -> (state, metrics)``: tasks for the step's view, one update.

    The panel is an argument, not a closure constant (XLA folds large constants slowly).
    The task loss is ``vmap``-ed over the batch by ``dmeta.meta.steps``; jit the result.

    ``remat`` wraps the task loss in ``jax.checkpoint`` (its activations, the window
    LSTM scans included, are recomputed in the backward pass instead of stored). With
    ``mesh`` the tasks drawn inside the step are split over the mesh's devices by a
    sharding constraint (``n_tasks`` must divide by the device count) while the panel and
    its index stay replicated: every device gathers its tasks' windows from its local
    copy, so no step moves panel data between devices, and the draw is the same as
    without a mesh. Jit with ``dmeta.parallel.jit_step(step, mesh)``.
    """

    def step(state: TrainState, arrays: Arrays, index: CellIndex):
        task_loss = make_task_loss(graphdef, arrays, n_samples=n_samples, beta=beta,
                                   objective=objective, sigma=sigma)  # fmt: skip
        if remat:
            task_loss = jax.checkpoint(task_loss)
        update = make_meta_train_step(task_loss, optimizer)
        next_key, k_batch, k_step = jax.random.split(state.key, 3)
        view = view_at(state.step, mode=mode, switch_every=switch_every)
        batch = sample_tasks(k_batch, index, view, n_tasks=n_tasks, n_query=n_query,
                             n_context=n_context, n_days=arrays.ys.shape[1],
                             weighting=weighting, spatial_types=spatial_types,
                             type_dropout=type_dropout, context_days=context_days)  # fmt: skip
        if mesh is not None:
            batch = constrain_batch(batch, mesh)
        state = TrainState(state.params, state.opt_state, state.step, next_key)
        state, metrics = update(state, batch, k_step)
        return state, dict(metrics, view=view)

    return step


# STMP's day-feature backbone (``train.backbone_lr_scale``): the modules that read the input
# window and the target day's calendar; the rest (set encoders, deterministic tables, head)
# turns a cell's context into its latents and the prediction.
BACKBONE = ("linear", "lstm", "jump", "fusion")


def backbone_mask(params: Params) -> Params:
    """True on the leaves of STMP's ``BACKBONE`` modules, False elsewhere (a pytree like
    ``params``, the top-level dict of ``dmeta.stmp.model.build``)."""
    return {
        name: jax.tree.map(lambda _, on=name in BACKBONE: on, sub) for name, sub in params.items()
    }


def adam(
    lr: float, n_steps: int, ema: float = 0.0, backbone_scale: float = 1.0
) -> optax.GradientTransformation:
    """Adam at ``lr`` (in its state, ``optax.inject_hyperparams``, the betas and eps kept
    static as in ``optax.adam``) after clipping the global norm to 1, its steps scaled by a
    cosine decay to zero over ``n_steps``, and an average of the iterates with decay ``ema``
    (``dmeta.train.averaging``; 0: the iterate itself). ``lr`` and ``ema`` live in the
    state, so a step built with any values updates with the state's, and the fits of a
    grid share one compiled step. ``backbone_scale`` != 1 (static: part of the step) scales
    the steps of STMP's ``BACKBONE`` parameters, their learning rate ``backbone_scale *
    lr`` (Adam's step is proportional to its rate)."""
    inject = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))
    scaled = (
        [] if backbone_scale == 1.0 else [optax.masked(optax.scale(backbone_scale), backbone_mask)]
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        inject(learning_rate=lr),
        *scaled,
        optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, n_steps)),
        optax.inject_hyperparams(param_average)(decay=ema),
    )


@functools.lru_cache(maxsize=8)
def _compiled_step(graphdef, n_steps: int, step_items: tuple, shard: bool, backbone_scale: float):
    mesh = data_mesh() if shard else None
    optimizer = adam(0.0, n_steps, backbone_scale=backbone_scale)
    step = make_train_step(graphdef, optimizer, mesh=mesh, **dict(step_items))
    return jit_step(step, mesh, donate_argnums=0)


def early_stopped(
    step_fn: Callable[[TrainState], tuple[TrainState, dict[str, Array]]],
    state: TrainState,
    prep: Prepared,
    predict: Callable[[Params, Array, Array], Array],
    *,
    n_steps: int,
    eval_every: int,
    patience: int | None,
    desc: str,
    lr_decays: int = 0,
    lr_factor: float = 0.1,
    min_steps: int = 0,
    settings: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> loop.FitResult:
    """``dmeta.train.loop.fit`` of a neural method, early-stopped on ``prep.val``
    (``settings``: the fit's static settings, for its checkpoint fingerprint).

    With validation targets and ``eval_every``, every ``eval_every`` steps scores
    ``val_mse``, the MSE in original units of ``predict(params, rows i32[N], cols i32[N])``
    (scaled predictions f32[N] of the targets ``np.nonzero(prep.val)``) at the averaged
    parameters (``dmeta.train.averaging.averaged_params``); the result's best state has
    the lowest, and ``patience`` scores without improvement stop the fit (after
    ``lr_decays`` cuts of the learning rate by ``lr_factor``, each when patience runs out:
    ``loop.fit``'s reduce on plateau; never before step ``min_steps``).
    Without them it runs ``n_steps`` and logs one row at the end.
    """
    rows, cols = np.nonzero(prep.val)
    y, scale = prep.data.y[rows, cols], prep.scale[rows]
    at = (jnp.asarray(rows), jnp.asarray(cols))

    def eval_fn(state: TrainState) -> dict[str, float]:
        pred = np.asarray(predict(averaged_params(state), *at)) * scale
        return {"val_mse": float(np.mean(np.square(pred - y)))}

    scored = bool(eval_every) and rows.size > 0
    return loop.fit(
        step_fn,
        state,
        n_steps=n_steps,
        eval_fn=eval_fn if scored else None,
        eval_every=eval_every or n_steps,
        patience=patience if scored else None,
        lr_decays=lr_decays if scored else 0,
        lr_factor=lr_factor,
        min_steps=min_steps,
        monitor="val_mse",
        desc=desc,
        # the data and the training / early-stopping days shape the run outside the state
        settings={**(settings or {}), "data": (prep.arrays, prep.train, prep.val)},
        progress=progress,
    )


def fit(
    graphdef: nnx.GraphDef,
    params: Params,
    prep: Prepared,
    *,
    key: Key,
    n_steps: int,
    lr: float = 3e-3,
    ema: float = 0.0,
    log_every: int = 0,
    patience: int | None = None,
    lr_decays: int = 0,
    lr_factor: float = 0.1,
    min_steps: int = 0,
    backbone_lr_scale: float = 1.0,
    eval_context: int = 64,
    eval_draws: int = 0,
    shard: bool = False,
    progress: bool | None = None,
    desc: str = "stmp",
    model_settings: Mapping[str, Any] | None = None,
    **step_kwargs,
) -> tuple[Params, list[dict[str, float]]]:
    """Trains STMP for at most ``n_steps`` (``adam``), ``early_stopped`` on ``prep.val``.

    With validation targets and ``log_every``, every ``log_every`` steps scores
    ``val_mse`` (``eval_context`` context points from ``prep.index``, ``eval_draws`` latent
    draws per forecast as in ``_predict_at``) and returns the
    parameters of the lowest; ``patience`` scores without improvement stop the fit. The
    jitted step is cached per (graphdef, n_steps, step sizes), so seeds and learning rates
    reuse one compile. ``ema`` averages the iterates (``adam``): the scores and the
    returned params are the average's. ``shard=True`` splits each step's tasks over all visible devices (parameters
    and panel replicated; see ``make_train_step``); ``step_kwargs`` go to
    ``make_train_step``. ``model_settings`` (the model's options) and ``step_kwargs``
    join the checkpoint fingerprint (``loop.fit``'s ``settings``). ``lr_decays``,
    ``lr_factor`` and ``min_steps``: reduce on plateau before stopping, and no stop before
    that step (``early_stopped``).
    ``backbone_lr_scale``: the ``BACKBONE`` modules learn at that multiple of ``lr``
    (``adam``; joins the fingerprint when not 1).

    Returns:
      The trained (best) params and the log rows (``step``, each metric's mean over the
      steps since the previous row, ``val_mse``); one row at the end without ``log_every``.
    """
    items = tuple(sorted(step_kwargs.items()))
    step = _compiled_step(graphdef, n_steps, items, shard, backbone_lr_scale)
    params, key = jax.tree.map(lambda x: x.copy(), (params, key))  # the step donates them
    val_key = jax.random.fold_in(key, 1)  # the same context sets at every evaluation
    scaled = {} if backbone_lr_scale == 1.0 else {"backbone_lr_scale": backbone_lr_scale}
    result = early_stopped(
        lambda state: step(state, prep.arrays, prep.index),
        init_train_state(params, adam(lr, n_steps, ema, backbone_lr_scale), key),
        prep,
        lambda params, rows, cols: _predict_at(
            graphdef,
            params,
            prep.arrays,
            prep.index,
            rows,
            cols,
            val_key,
            eval_context,
            512,
            eval_draws,
        ),
        n_steps=n_steps,
        eval_every=log_every,
        patience=patience,
        lr_decays=lr_decays,
        lr_factor=lr_factor,
        min_steps=min_steps,
        desc=desc,
        settings={
            **step_kwargs,
            "eval_context": eval_context,
            "eval_draws": eval_draws,
            **(model_settings or {}),
            **scaled,
        },  # fmt: skip
        progress=progress,
    )
    return averaged_params(result.best_state), result.history


def posteriors(
    graphdef: nnx.GraphDef, params: Params, arrays: Arrays, index: CellIndex, *, key: Key,
    n_context: int, scales: bool = False,
) -> tuple[Array, ...]:  # fmt: skip
    """Posterior means from context sets drawn from ``index``: z_r f32[R, Dt, Z], z_d f32[Dt, Z]
    (Z + G * H with the model's ``context_path``: each followed by its pooled context); with
    ``scales`` also their standard deviations s_r, s_d of the same shapes (0 on the pooled
    context and for deterministic latents), so ``z + s * eps`` draws from the posteriors.

    ``z_r[r, d]`` is region r's latent for tasks of date type d (its context set is
    stratified by ``region_context_days``). This is all a new region or festival
    needs: a forward pass over its context set.
    """
    model = bind(graphdef, params)
    n_regions, n_types = index.cell_count.shape
    k_r, k_d = jax.random.split(key)
    types = jnp.arange(n_types)
    cell_r, cell_d = jnp.divmod(jnp.arange(n_regions * n_types), n_types)
    r_days, r_mask = region_context_days(k_r, index, cell_r, cell_d, n_context)
    pick_d = jax.random.randint(k_d, (n_types, n_context), 0, index.type_count[:, None])
    d_pairs = index.type_pairs[types[:, None], pick_d]
    d_mask = jnp.broadcast_to((index.type_count > 0)[:, None], d_pairs.shape).astype(jnp.float32)

    def stacked(mu, logvar, pooled):  # (mean, standard deviation) of [latent, pooled]
        sd = jnp.zeros_like(mu) if logvar is None else jnp.exp(0.5 * logvar)
        return jnp.concatenate([mu, pooled]), jnp.concatenate([sd, jnp.zeros_like(pooled)])

    def one_region(r, d, days, mask):
        ctx = region_context(arrays, r, days, period=model.period, n_types=model.n_types)
        return stacked(*model.region_side(ctx, mask, arrays.attrs[r], r, d))

    def one_type(d, pairs, mask):
        return stacked(*model.type_side(type_context(arrays, pairs, period=model.period), mask, d))

    z_r, s_r = jax.vmap(one_region)(cell_r, cell_d, r_days, r_mask)
    z_r, s_r = (a.reshape(n_regions, n_types, -1) for a in (z_r, s_r))
    z_d, s_d = jax.vmap(one_type)(types, d_pairs, d_mask)
    return (z_r, z_d, s_r, s_d) if scales else (z_r, z_d)


def predict(
    graphdef: nnx.GraphDef,
    params: Params,
    prep: Prepared,
    *,
    key: Key,
    n_context: int = 64,
    batch_size: int = 512,
    draws: int = 0,
) -> np.ndarray:
    """Scaled point predictions f32[N] for the test targets ``np.nonzero(prep.test)``, with
    context sets drawn from everything known before the test period (``prep.known_index``);
    ``draws`` as in ``_predict_at``."""
    rows, cols = (jnp.asarray(a) for a in np.nonzero(prep.test))
    return np.asarray(_predict_at(graphdef, params, prep.arrays, prep.known_index, rows, cols,
                                  key, n_context, batch_size, draws))  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _predict_at(graphdef, params, arrays, index, rows, cols, key, n_context, batch_size, draws):
    """Scaled forecasts f32[N] of targets (rows[i], cols[i]): the generative mean at the
    posterior means of both latents (``draws`` = 0), or its mean over ``draws`` joint draws
    of the two latents from their posteriors, in the level space (the generative mean
    averaged, whatever ``model.head`` makes of ``g``, not ``g``)."""
    z = posteriors(graphdef, params, arrays, index, key=key, n_context=n_context,
                   scales=draws > 0)  # fmt: skip
    model = bind(graphdef, params)
    noise = jax.random.fold_in(key, 2)

    def one(rtn):
        r, t, n = rtn
        d = arrays.dtype[r, t]
        zr, zd = z[0][r, d][None], z[1][d][None]
        if draws:
            s_r, s_d = z[2:]
            k_r, k_d = jax.random.split(jax.random.fold_in(noise, n))
            zr = zr + s_r[r, d][None] * jax.random.normal(k_r, (draws, zr.shape[-1]))
            zd = zd + s_d[d][None] * jax.random.normal(k_d, (draws, zd.shape[-1]))
        mean, _ = predict_cell(model, arrays, r, t[None], zr, zd)
        return mean[:, 0].mean()

    return jax.lax.map(one, (rows, cols, jnp.arange(rows.shape[0])), batch_size=batch_size)
