"""MAML meta-train throughput: the dmeta engine against PyTorch's MAML patterns, same machine, one run.

Shape (RMLDP's MPFN): 32 tasks (segments; ``--tasks``, e.g. the paper's meta-batch 128), 16
support + 16 query samples each, windows of 30 steps with 48 features, GRU hidden 128, one
inner SGD step, Adam outer step. dmeta runs ``make_meta_train_step(make_maml_task_loss(...))``
jitted with the state donated, in several variants. The PyTorch peers (``_torch_mpfn.py``,
``--device cpu|cuda``; JAX uses its default backend):

- ``torch_second_order_loop`` / ``_cell_loop``: the learn2learn / higher task loop
  (``nn.GRU`` / an explicit GRU cell loop);
- ``torch_second_order_func``: ``torch.func.vmap`` over tasks of ``torch.func.grad`` of the
  support loss, query loss at the adapted parameters via ``functional_call``, cell-loop GRU;
- ``torch_second_order_func_compile``: the same function under ``torch.compile``
  (``--no-compile`` skips it: about 5 minutes of compiling on a 2-core CPU).

All start from the same weights; each peer's first second-order meta-gradient is checked
against the engine's (max relative and absolute difference) before anything is timed. Repeats of
all contenders are interleaved and the median is reported, with the load average, because the
CPU is shared. For every contender: steady-state ``steps/s``, ``_warmup_s`` (build, compile and
first step) and ``_time_to_200_s`` (warm-up + 199 steady-state steps). One line per figure
(``name: value unit``); the last lines are ``speedup_vs_best_torch: X`` (best dmeta
second-order steps/s over the best torch peer's) and ``time_to_200_vs_best_torch: Y`` (the best
peer's time to 200 meta-steps over dmeta's; above 1: dmeta is ahead).

    .venv/bin/python experiments/benchmarks/maml_throughput.py \
        --out experiments/results/benchmarks/maml_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
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
    machine,
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
      gru: ``"engine"`` (``dmeta.models.mpfn.MPFN``'s default GRU, the fused custom-VJP one,
        via ``split_params``), ``"engine_scan"`` (MPFN with ``gru_impl="scan"``), ``"unrollK"`` (the same
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
    Variant("engine_scan", "vmap"),
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


def engine_apply(gru: str, shape: Shape, seed: int) -> Callable:
    """The MPFN apply of an engine variant: ``"engine"`` (default GRU) or ``"engine_scan"``."""
    impl = {"engine_scan": {"gru_impl": "scan"}}.get(gru, {})
    return split_params(MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(seed), **impl))[0]


def loss_for(gru: str, apply: Callable) -> Callable[[Params, Split], Array]:
    """``loss_fn(params, split)`` for a ``Variant.gru`` name (``"full"`` unrolls every step);
    ``apply`` is the engine variant's MPFN apply (``engine_apply``)."""
    if gru.startswith("engine"):
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


TORCH_PEERS = ("loop", "cell_loop", "func", "func_compile")
STEPS_TO = 200  # time_to_200: warm-up (build, compile, first step) + 199 steady-state steps


def variant_named(name: str) -> Variant:
    """The ``Variant`` whose ``name`` is ``name`` (among the second-order ones)."""
    known = {v.name: v for v in SECOND_ORDER + QUICK_SECOND_ORDER}
    if name not in known:
        raise SystemExit(f"unknown variant {name!r}; known: {sorted(known)}")
    return known[name]


def dmeta_meta_grads(apply, theta: Params, batch: TaskBatch, *, first_order: bool = False):
    """Meta-gradient of the mean query loss w.r.t. theta (engine path), second order unless
    ``first_order``; matmuls at full f32 precision (a GPU's default may be TF32)."""
    task_loss = make_maml_task_loss(
        functools.partial(split_loss, apply), step_size=STEP_SIZE, first_order=first_order
    )

    def objective(theta):
        return mean_over_tasks(task_loss, {"theta": theta}, batch, jax.random.key(1))[0]

    with jax.default_matmul_precision("highest"):
        return jax.jit(jax.grad(objective))(theta)


def max_abs_diff(a: Params, b: Params) -> float:
    """Largest ``|a - b|`` over all leaves."""
    return max(
        float(np.max(np.abs(np.asarray(x) - y))) for x, y in zip(*map(jax.tree.leaves, (a, b)))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="tasks per meta-batch (T)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender")
    parser.add_argument(
        "--quick", action="store_true", help="tiny shape and fewer variants, for tests"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="torch device (JAX: its default)"
    )
    parser.add_argument(
        "--peers",
        default=",".join(TORCH_PEERS),
        help=f"comma-separated second-order torch peers among {','.join(TORCH_PEERS)}",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile peer (func_compile)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated dmeta second-order variants (default: all; e.g. engine_vmap)",
    )
    parser.add_argument(
        "--no-first-order", action="store_true", help="skip the first-order contenders"
    )
    parser.add_argument(
        "--no-flops", action="store_true", help="skip the FLOP count and matmul-rate share"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a contender that fails (or whose meta-gradient disagrees) is reported and dropped",
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
    peers = [
        p for p in args.peers.split(",") if p and not (args.no_compile and p == "func_compile")
    ]
    unknown = sorted(set(peers) - set(TORCH_PEERS))
    if unknown:
        raise SystemExit(f"unknown torch peers {unknown}; known: {TORCH_PEERS}")
    if args.variants:
        second_order = tuple(variant_named(n) for n in args.variants.split(","))
    else:
        second_order = QUICK_SECOND_ORDER if args.quick else SECOND_ORDER
    first_order_variants = (
        () if args.no_first_order else (QUICK_FIRST_ORDER if args.quick else FIRST_ORDER)
    )
    emit = Report()

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: T={shape.tasks} tasks, {shape.support}+{shape.query} samples, S={shape.seq}, "
        f"F={shape.features}, H={shape.hidden}, 1 inner step, adam; repeats={repeats}"
    )
    tdevice = torch.cuda.get_device_name(0) if args.device == "cuda" else machine()
    emit(
        f"devices: torch {args.device} ({tdevice}); jax {[str(d) for d in jax.devices()]} "
        f"({jax.devices()[0].device_kind})"
    )
    emit(
        f"versions: jax {jax.__version__}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    if args.device == "cuda":
        emit(
            "precision: torch matmul allow_tf32="
            f"{torch.backends.cuda.matmul.allow_tf32}, cudnn allow_tf32="
            f"{torch.backends.cudnn.allow_tf32}; jax default_matmul_precision="
            f"{getattr(jax.config, 'jax_default_matmul_precision', '?')} (variants _prec_highest: full f32)"
        )
    emit("load_avg_start", load_average())

    def attempt(name: str, fn: Callable):
        """``fn()``; with ``--keep-going`` a failure is reported as ``name_error: ...``."""
        if not args.keep_going:
            return fn()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - reported, the rest of the table goes on
            emit(
                f"{name}_error: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            )
            return None

    apply, theta = split_params(MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(args.seed)))
    batch = make_batch(shape, args.seed + 1)
    tbatch = tm.batch_to_torch(batch, args.device)

    grads = dmeta_meta_grads(apply, theta, batch)
    first_order_grads = dmeta_meta_grads(apply, theta, batch, first_order=True)
    emit("meta_grad_second_vs_first_order_rel_diff", max_rel_diff(first_order_grads, grads))

    contenders: dict[str, Callable] = {}
    runners: dict[str, Runner] = {}
    warmups: dict[str, float] = {}
    grad_diffs: list[float] = []

    def add_dmeta(name: str, variant: Variant, first_order: bool) -> None:
        start = time.perf_counter()
        runner = Runner(
            loss_for(variant.gru, engine_apply(variant.gru, shape, args.seed)),
            variant,
            theta,
            batch,
            first_order=first_order,
        )
        warmups[name] = time.perf_counter() - start
        runners[name] = contenders[name] = runner
        emit(f"{name}_warmup_s", warmups[name], "s")

    def add_torch(name: str, kind: str, first_order: bool) -> None:
        start = time.perf_counter()
        model = tm.from_dmeta(
            theta, shape.features, shape.hidden, cell=kind != "loop", device=args.device
        )
        step = tm.make_peer_step(
            kind, model, step_size=STEP_SIZE, learning_rate=LEARNING_RATE, first_order=first_order
        )
        if not first_order:  # the first step's meta-gradient, checked against the engine's
            tgrads = tm.grads_to_dmeta(theta, step.grads(tbatch))
            step.update(tbatch)
            rel, absolute = max_rel_diff(tgrads, grads), max_abs_diff(tgrads, grads)
            emit(f"meta_grad_max_rel_diff_{kind}", rel)
            emit(f"meta_grad_max_abs_diff_{kind}", absolute)
            grad_diffs.append(rel)
            if not rel <= args.grad_rtol:
                raise ValueError(f"{name}: meta-gradient differs from dmeta's by {rel:.3g}")
        else:
            step(tbatch)
        warmups[name] = time.perf_counter() - start
        contenders[name] = functools.partial(step, tbatch)
        emit(f"{name}_warmup_s", warmups[name], "s")

    # torch.compile first: its slow compile is out of the way before any timing
    for kind in sorted(peers, key=lambda k: k != "func_compile"):
        name = f"torch_second_order_{kind}"
        attempt(name, functools.partial(add_torch, name, kind, False))
    if grad_diffs:
        emit("meta_grad_max_rel_diff", max(grad_diffs))
    for first_order, variants in ((False, second_order), (True, first_order_variants)):
        order = "first_order" if first_order else "second_order"
        for v in variants:
            name = f"dmeta_{order}_{v.name}"
            attempt(name, functools.partial(add_dmeta, name, v, first_order))
        if first_order and variants and "loop" in peers:
            name = "torch_first_order_loop"
            attempt(name, functools.partial(add_torch, name, "loop", True))

    second = [n for n in runners if n.startswith("dmeta_second_order")]
    if second:
        reference = runners[second[0]].first_metrics
        emit(
            "variants_metrics_max_rel_diff",
            max(
                abs(float(runners[n].first_metrics[k]) / float(reference[k]) - 1.0)
                for n in second
                for k in ("grad_norm", "query_loss", "support_loss")
            ),
        )

    medians = interleaved_medians(contenders, repeats)
    time_to = {n: warmups[n] + (STEPS_TO - 1) * s for n, s in medians.items()}
    for name, seconds in medians.items():
        emit(name, 1.0 / seconds, "steps/s")
    for name in medians:
        emit(f"{name}_time_to_{STEPS_TO}_s", time_to[name], "s")

    def best(prefix, by=medians):
        names = [n for n in medians if n.startswith(prefix)]
        if not names:
            return None, float("nan")
        name = min(names, key=by.get)
        return name, by[name]

    best_so, t_so = best("dmeta_second_order")
    best_fo, t_fo = best("dmeta_first_order")
    best_torch, t_torch = best("torch_second_order")
    if best_so:
        emit("best_dmeta_second_order", best_so.removeprefix("dmeta_second_order_"))
    if best_torch:
        emit("best_torch_second_order", best_torch.removeprefix("torch_second_order_"))
    if best_fo and "torch_first_order_loop" in medians:
        emit("speedup_first_order_vs_torch_loop", medians["torch_first_order_loop"] / t_fo)

    if best_so and not args.no_flops:
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
        if best_torch:
            emit("best_torch_share_of_matmul", 100 * flops / t_torch / 1e9 / peak, "%")
    emit("load_avg_end", load_average())
    if best_so:
        for kind in ("cell_loop", "loop"):
            if f"torch_second_order_{kind}" in medians:
                emit(f"speedup_vs_torch_{kind}", medians[f"torch_second_order_{kind}"] / t_so)
        if best_torch:
            _, t200_so = best("dmeta_second_order", time_to)
            _, t200_torch = best("torch_second_order", time_to)
            emit("speedup_vs_best_torch", t_torch / t_so)
            emit(f"time_to_{STEPS_TO}_vs_best_torch", t200_torch / t200_so)
    emit.save(args.out)


if __name__ == "__main__":
    main()
