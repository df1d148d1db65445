"""MAML meta-train throughput: the dmeta engine against a PyTorch task loop, same machine, one run.

Shape (RMLDP's MPFN): 32 tasks (segments), 16 support + 16 query samples each, windows of 30
steps with 48 features, GRU hidden 128, one inner SGD step. dmeta runs
``make_meta_train_step(make_maml_task_loss(...))`` jitted with the state donated; PyTorch runs
the learn2learn / higher pattern (``_torch_mpfn.py``). Both start from the same weights; their
second-order meta-gradients are checked to agree before anything is timed. Repeats of all
contenders are interleaved and the median is reported, with the load average, because the CPU is
shared. One line per figure (``name: value unit``); the last line is
``speedup_vs_torch_loop: X`` (best dmeta second-order steps/s over torch's).

    .venv/bin/python experiments/benchmarks/maml_throughput.py \
        --out experiments/results/benchmarks/maml_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.meta.batching import mean_over_tasks
from dmeta.meta.inner import sgd_step
from dmeta.meta.maml import init_meta_params, make_maml_task_loss
from dmeta.meta.steps import make_meta_train_step
from dmeta.models.mpfn import MPFN, masked_mse, split_loss
from dmeta.nn.functional import split_params
from dmeta.train.state import init_train_state
from dmeta.types import Array, Params, Split, TaskBatch
from experiments.benchmarks.common import (
    Report,
    compiled_flops,
    interleaved_medians,
    load_average,
    matmul_gflops,
    require,
)

STEP_SIZE = 1e-2
LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Shape:
    """Benchmark shape: T tasks, N_s / N_q samples, S steps, F features, H hidden."""

    tasks: int = 32
    support: int = 16
    query: int = 16
    seq: int = 30
    features: int = 48
    hidden: int = 128


QUICK = Shape(tasks=4, support=4, query=4, seq=5, features=3, hidden=8)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One dmeta configuration of the meta-train step.

    Attributes:
      gru: ``"engine"`` (``dmeta.nn.rnn.GRU`` via ``split_params``), ``"unrollK"`` (the same
        GRU math with ``lax.scan(..., unroll=K)``, ``"unrollfull"`` for every step) or
        ``"fusedK"`` (both GRUs stepped in one scan, unroll K).
      strategy: ``"vmap"`` or ``"map"`` across tasks.
      precision: ``jax.default_matmul_precision`` while tracing (None: JAX's default).
      shared_support: take the logged support loss from the inner ``value_and_grad`` instead
        of the engine's separate forward pass (a proposed change to ``dmeta.meta``).
    """

    gru: str = "engine"
    strategy: str = "vmap"
    precision: str | None = None
    shared_support: bool = False

    @property
    def name(self) -> str:
        prec = f"_prec_{self.precision}" if self.precision else ""
        shared = "_shared_support" if self.shared_support else ""
        return f"{self.gru}_{self.strategy}{prec}{shared}"


SECOND_ORDER = (
    Variant("engine", "vmap"),
    Variant("engine", "map"),
    Variant("engine", "vmap", "highest"),
    Variant("engine", "vmap", "bfloat16"),
    Variant("unroll2", "vmap"),
    Variant("unroll5", "vmap"),
    Variant("fused1", "vmap"),
    Variant("fused1", "map"),
    Variant("engine", "vmap", shared_support=True),
    Variant("engine", "map", shared_support=True),
)
FIRST_ORDER = (Variant("engine", "vmap"), Variant("engine", "map"))
QUICK_SECOND_ORDER = (Variant("engine", "vmap"), Variant("fused1", "map", shared_support=True))
QUICK_FIRST_ORDER = (Variant("engine", "vmap"),)


def make_batch(shape: Shape, seed: int) -> TaskBatch:
    """Gaussian tasks; the last sample of every odd task is padding (mask 0)."""
    keys = jax.random.split(jax.random.key(seed), 2)

    def split(key, n):
        k1, k2, k3 = jax.random.split(key, 3)
        x = (shape.tasks, n, shape.seq, shape.features)
        mask = np.ones((shape.tasks, n), np.float32)
        mask[1::2, -1] = 0.0
        return Split(
            x_local=jax.random.normal(k1, x),
            x_season=jax.random.normal(k2, x),
            y=jax.random.normal(k3, (shape.tasks, n)),
            mask=jnp.asarray(mask),
        )

    return TaskBatch(
        split(keys[0], shape.support), split(keys[1], shape.query), jnp.arange(shape.tasks)
    )


def _gru_step(p: Params, h: Array, xp: Array) -> Array:
    """One GRU step (same math as ``dmeta.nn.rnn.GRU``): h f32[..., H], xp f32[..., 3H]."""
    hidden = h.shape[-1]
    hp = h @ p["w_h"] + p["b_h"]
    r = jax.nn.sigmoid(xp[..., :hidden] + hp[..., :hidden])
    z = jax.nn.sigmoid(xp[..., hidden : 2 * hidden] + hp[..., hidden : 2 * hidden])
    n = jnp.tanh(xp[..., 2 * hidden :] + r * hp[..., 2 * hidden :])
    return (1.0 - z) * n + z * h


def _project(p: Params, x: Array) -> Array:
    """Input projection of every step, time first: f32[..., S, F] -> f32[S, ..., 3H]."""
    return jnp.moveaxis(x @ p["w_x"] + p["b_x"], -2, 0)


def mpfn_scan(params: Params, x_local: Array, x_season: Array, *, unroll: int | bool, fused: bool):
    """MPFN forward with a configurable scan: f32[..., S, F] x2 -> f32[...].

    ``fused=False`` runs one ``lax.scan`` per GRU like ``dmeta.models.mpfn.MPFN``;
    ``fused=True`` steps both GRUs in a single scan.
    """
    ps, pl = params["gru_season"], params["gru_local"]
    xs, xl = _project(ps, x_season), _project(pl, x_local)
    h0 = jnp.zeros(xs.shape[1:-1] + (ps["w_h"].shape[0],), xs.dtype)
    if fused:

        def both(h, xp):
            h = (_gru_step(ps, h[0], xp[0]), _gru_step(pl, h[1], xp[1]))
            return h, None

        (h_season, h_local), _ = jax.lax.scan(both, (h0, h0), (xs, xl), unroll=unroll)
    else:

        def run(p, x):
            return jax.lax.scan(lambda h, xp: (_gru_step(p, h, xp), None), h0, x, unroll=unroll)[0]

        h_season, h_local = run(ps, xs), run(pl, xl)
    h = jnp.concatenate([h_season, h_local], axis=-1)
    return (h @ params["head"]["kernel"] + params["head"]["bias"])[..., 0]


def loss_for(gru: str, apply: Callable) -> Callable[[Params, Split], Array]:
    """``loss_fn(params, split)`` for a ``Variant.gru`` name (``"full"`` unrolls every step)."""
    if gru == "engine":
        return functools.partial(split_loss, apply)
    fused = gru.startswith("fused")
    k = gru.removeprefix("fused").removeprefix("unroll")
    unroll = True if k == "full" else int(k)

    def loss(params, split):
        pred = mpfn_scan(params, split.x_local, split.x_season, unroll=unroll, fused=fused)
        return masked_mse(pred, split.y, split.mask)

    return loss


def shared_support_task_loss(loss_fn, *, first_order: bool):
    """One-step MAML task loss whose ``support_loss`` comes from the inner ``value_and_grad``.

    Same objective and aux as ``make_maml_task_loss(loss_fn, steps=1)``, without its extra
    forward pass over the support set for the logged ``support_loss``.
    """

    def task_loss(meta_params, task, key):
        theta = meta_params["theta"]
        support_loss, grads = jax.value_and_grad(loss_fn)(theta, task.support)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        query_loss = loss_fn(sgd_step(theta, grads, STEP_SIZE), task.query)
        return query_loss, {"query_loss": query_loss, "support_loss": support_loss}

    return task_loss


def make_step(loss_fn, variant: Variant, *, first_order: bool):
    """Jitted ``(state, batch, key) -> (state, metrics)`` with the state donated."""
    if variant.shared_support:
        task_loss = shared_support_task_loss(loss_fn, first_order=first_order)
    else:
        task_loss = make_maml_task_loss(
            loss_fn, steps=1, step_size=STEP_SIZE, first_order=first_order
        )
    step = make_meta_train_step(task_loss, optax.adam(LEARNING_RATE), strategy=variant.strategy)
    return jax.jit(step, donate_argnums=0)


class Runner:
    """A compiled dmeta step and the state it advances, callable with no arguments."""

    def __init__(self, loss_fn, variant: Variant, theta: Params, batch: TaskBatch, *, first_order):
        self.variant, self.batch, self.key = variant, batch, jax.random.key(1)
        self.state = init_train_state(
            init_meta_params(jax.tree.map(jnp.copy, theta)),
            optax.adam(LEARNING_RATE),
            jax.random.key(0),
        )
        with jax.default_matmul_precision(variant.precision):
            self.step = (
                make_step(loss_fn, variant, first_order=first_order)
                .lower(self.state, batch, self.key)
                .compile()
            )
        self.first_metrics = self()

    def __call__(self) -> dict[str, Array]:
        self.state, metrics = self.step(self.state, self.batch, self.key)
        return jax.block_until_ready(metrics)


def max_rel_diff(a: Params, b: Params) -> float:
    """Largest over leaves of ``max|a - b| / max|b|``."""
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)), a, b
    )
    return max(jax.tree.leaves(diffs))


def dmeta_meta_grads(apply, theta: Params, batch: TaskBatch) -> Params:
    """Second-order meta-gradient of the mean query loss w.r.t. theta (engine path)."""
    task_loss = make_maml_task_loss(functools.partial(split_loss, apply), step_size=STEP_SIZE)

    def objective(theta):
        return mean_over_tasks(task_loss, {"theta": theta}, batch, jax.random.key(1))[0]

    return jax.jit(jax.grad(objective))(theta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="tasks per meta-batch (T)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender")
    parser.add_argument(
        "--quick", action="store_true", help="tiny shape and fewer variants, for tests"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--grad-rtol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    torch = require("torch")
    from experiments.benchmarks import _torch_mpfn as tm

    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else Shape()
    if args.tasks is not None:
        shape = dataclasses.replace(shape, tasks=args.tasks)
    repeats = args.repeats or (2 if args.quick else 7)
    emit = Report()

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: T={shape.tasks} tasks, {shape.support}+{shape.query} samples, S={shape.seq}, "
        f"F={shape.features}, H={shape.hidden}, 1 inner step, adam; repeats={repeats}"
    )
    emit(
        f"versions: jax {jax.__version__}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    emit("load_avg_start", load_average())

    apply, theta = split_params(MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(args.seed)))
    batch = make_batch(shape, args.seed + 1)
    tbatch = tm.batch_to_torch(batch)

    grads = dmeta_meta_grads(apply, theta, batch)
    grad_diff = 0.0
    for cell in (False, True):
        tmodel = tm.from_dmeta(theta, shape.features, shape.hidden, cell=cell)
        tgrads = tm.grads_to_dmeta(theta, tm.meta_grads(tmodel, tbatch, step_size=STEP_SIZE))
        grad_diff = max(grad_diff, max_rel_diff(grads, tgrads))
    emit("meta_grad_max_rel_diff", grad_diff)
    if not grad_diff <= args.grad_rtol:
        raise SystemExit(f"dmeta and torch meta-gradients differ by {grad_diff:.3g}")

    contenders: dict[str, Callable] = {}
    runners: dict[str, Runner] = {}
    plan = (
        ((False, QUICK_SECOND_ORDER), (True, QUICK_FIRST_ORDER))
        if args.quick
        else ((False, SECOND_ORDER), (True, FIRST_ORDER))
    )
    for first_order, variants in plan:
        order = "first_order" if first_order else "second_order"
        for v in variants:
            name = f"dmeta_{order}_{v.name}"
            runners[name] = Runner(loss_for(v.gru, apply), v, theta, batch, first_order=first_order)
            contenders[name] = runners[name]
        for cell in (False, True) if not first_order else (False,):
            model = tm.from_dmeta(theta, shape.features, shape.hidden, cell=cell)
            optim = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            tstep = tm.make_meta_step(model, optim, step_size=STEP_SIZE, first_order=first_order)
            name = f"torch_{order}_{'cell_loop' if cell else 'loop'}"
            contenders[name] = functools.partial(tstep, tbatch)

    reference = runners["dmeta_second_order_engine_vmap"].first_metrics
    emit(
        "variants_metrics_max_rel_diff",
        max(
            abs(float(r.first_metrics[k]) / float(reference[k]) - 1.0)
            for n, r in runners.items()
            if n.startswith("dmeta_second_order")
            for k in ("grad_norm", "query_loss", "support_loss")
        ),
    )

    medians = interleaved_medians(contenders, repeats)
    for name, seconds in medians.items():
        emit(name, 1.0 / seconds, "steps/s")

    def best(prefix):
        name = min((n for n in medians if n.startswith(prefix)), key=medians.get)
        return name, medians[name]

    best_so, t_so = best("dmeta_second_order")
    best_fo, t_fo = best("dmeta_first_order")
    emit("best_dmeta_second_order", best_so.removeprefix("dmeta_second_order_"))
    emit("speedup_first_order_vs_torch_loop", medians["torch_first_order_loop"] / t_fo)

    # the best variant's computation with every scan step unrolled, so that XLA counts them all
    unrolled = dataclasses.replace(runners[best_so].variant, gru="unrollfull", strategy="vmap")
    flops = compiled_flops(
        make_step(loss_for(unrolled.gru, apply), unrolled, first_order=False),
        runners[best_so].state,
        batch,
        jax.random.key(1),
    )
    peak = matmul_gflops()
    emit("flops_per_second_order_step", flops / 1e9, "GFLOP")
    emit("dmeta_second_order_gflops", flops / t_so / 1e9, "GFLOP/s")
    emit("matmul_f32_gflops", peak, "GFLOP/s")
    emit("dmeta_share_of_matmul", 100 * flops / t_so / 1e9 / peak, "%")
    emit("load_avg_end", load_average())
    emit("speedup_vs_torch_cell_loop", medians["torch_second_order_cell_loop"] / t_so)
    emit("speedup_vs_torch_loop", medians["torch_second_order_loop"] / t_so)
    emit.save(args.out)


if __name__ == "__main__":
    main()
