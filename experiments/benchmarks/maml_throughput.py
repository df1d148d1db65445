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

The ``_2dev`` variants split the tasks over two devices as ``dmeta run --data-parallel``
does; on a CPU they need ``--host-devices 2`` (two simulated devices, one per core of a 2-core
machine, where one device leaves the second core to Eigen's intra-op threads) and are
skipped, and named, without it.

All start from the same weights; each peer's first second-order meta-gradient is checked
against the engine's (max relative and absolute difference) before anything is timed. Repeats of
all contenders are interleaved and the median is reported, with the load average, because the
CPU is shared. For every contender: steady-state ``steps/s``, ``_warmup_s`` (build, compile and
first step) and ``_time_to_200_s`` (warm-up + 199 steady-state steps). One line per figure
(``name: value unit``); the last lines are ``speedup_vs_best_torch: X`` (best dmeta
second-order steps/s over the best torch peer's) and ``time_to_200_vs_best_torch: Y`` (the best
peer's time to 200 meta-steps over dmeta's; above 1: dmeta is ahead).

    .venv/bin/python experiments/benchmarks/maml_throughput.py --host-devices 2 \
        --out experiments/results/benchmarks/maml_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dmeta.meta.batching import mean_over_tasks
from dmeta.meta.maml import init_meta_params, make_maml_task_loss
from dmeta.meta.steps import make_meta_train_step
from dmeta.models.mpfn import MPFN, masked_mse, split_loss
from dmeta.nn.functional import split_params
from dmeta.nn.fused_gru import gru_sequence
from dmeta.parallel import data_mesh, replicate, shard_batch, sharded_jit, use_host_devices
from dmeta.train.state import init_train_state
from dmeta.types import Array, Params, Split, TaskBatch
from experiments.benchmarks.common import (
    STEPS_TO,
    Contenders,
    Report,
    add_peer_args,
    compiled_flops,
    load_average,
    machine,
    matmul_gflops,
    require,
    require_whole_graph,
    torch_compile_cache,
    torch_precision,
    torch_versions,
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


# XLA CPU's library rewriters: the option that hands dots to XNNPACK, YNNPACK or oneDNN
# instead of Eigen, and its value for "every dot"
DOT_LIBRARIES = {
    "xnn": "xla_cpu_experimental_xnn_fusion_type",
    "ynn": "xla_cpu_experimental_ynn_fusion_type",
    "onednn": "xla_cpu_experimental_onednn_fusion_type",
}
LIBRARY_DOT = "LIBRARY_FUSION_TYPE_DOT"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One dmeta configuration of the meta-train step.

    Attributes:
      gru: ``"engine"`` (``dmeta.models.mpfn.MPFN``'s default GRU, the fused custom-VJP one,
        via ``split_params``), ``"engine_keep"`` (the same GRU with ``remat_steps=False``:
        its scans stack every intermediate when differentiated again), ``"engine_scan"``
        (MPFN with ``gru_impl="scan"``), ``"unrollK"`` (the same
        GRU math with ``lax.scan(..., unroll=K)``, ``"unrollfull"`` for every step) or
        ``"fusedK"`` (both GRUs stepped in one scan, unroll K).
      strategy: ``"vmap"`` or ``"map"`` across tasks.
      precision: ``jax.default_matmul_precision`` while tracing (None: JAX's default).
      devices: the tasks split over this many devices (``dmeta.parallel``, as ``dmeta run
        --data-parallel``); on a CPU, simulated host devices
        (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), one per core.
      dots: an XLA CPU library rewriter handed every dot (``DOT_LIBRARIES``; an
        experimental compile option, CPU only), None: XLA's default.
    """

    gru: str = "engine"
    strategy: str = "vmap"
    precision: str | None = None
    devices: int = 1
    dots: str | None = None

    @property
    def name(self) -> str:
        prec = f"_prec_{self.precision}" if self.precision else ""
        dots = f"_{self.dots}_dot" if self.dots else ""
        dev = f"_{self.devices}dev" if self.devices > 1 else ""
        return f"{self.gru}_{self.strategy}{prec}{dots}{dev}"

    @property
    def compiler_options(self) -> dict[str, str] | None:
        """XLA compile options of ``dots`` (None: the defaults)."""
        return {DOT_LIBRARIES[self.dots]: LIBRARY_DOT} if self.dots else None

    def full_f32(self, backend: str) -> bool:
        """Whether its matmuls are full f32 like the torch peers' (JAX's default is on CPU;
        on a GPU it may be TF32, so only ``"highest"`` is)."""
        return self.precision == "highest" or (self.precision is None and backend == "cpu")


SECOND_ORDER = (
    Variant("engine", "vmap"),
    Variant("engine_keep", "vmap"),
    Variant("engine_scan", "vmap"),
    Variant("engine", "map"),
    Variant("engine", "vmap", "highest"),
    Variant("engine_scan", "vmap", "highest"),
    Variant("engine", "vmap", "bfloat16"),
    Variant("unroll2", "vmap"),
    Variant("unroll5", "vmap"),
    Variant("fused1", "vmap"),
    Variant("fused1", "map"),
    Variant("engine", "vmap", devices=2),
    Variant("engine_keep", "vmap", devices=2),
    Variant("engine", "vmap", "highest", devices=2),
    Variant("engine", "vmap", dots="ynn"),
    Variant("engine", "vmap", devices=2, dots="ynn"),
)
FIRST_ORDER = (Variant("engine", "vmap"), Variant("engine", "map"))
QUICK_SECOND_ORDER = (
    Variant("engine", "vmap"),
    Variant("fused1", "map"),
    Variant("engine", "vmap", devices=2),
)
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


def mpfn_keep(params: Params, x_local: Array, x_season: Array) -> Array:
    """MPFN forward through ``gru_sequence(..., remat_steps=False)``: f32[..., S, F] x2 ->
    f32[...] (the engine's math and parameters, its scans without step checkpoints)."""

    def last_state(p: Params, x: Array) -> Array:
        h0 = jnp.zeros(x.shape[:-2] + (p["w_h"].shape[0],), x.dtype)
        weights = (p["w_x"], p["b_x"], p["w_h"], p["b_h"])
        return gru_sequence(*weights, x, h0, last_only=True, remat_steps=False)

    h_season = last_state(params["gru_season"], x_season)
    h = jnp.concatenate([h_season, last_state(params["gru_local"], x_local)], axis=-1)
    return (h @ params["head"]["kernel"] + params["head"]["bias"])[..., 0]


def engine_apply(gru: str, shape: Shape, seed: int) -> Callable:
    """The MPFN apply of an engine variant: ``"engine"`` (default GRU), ``"engine_keep"``
    (``mpfn_keep``) or ``"engine_scan"``."""
    if gru == "engine_keep":
        return mpfn_keep
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


def make_step(loss_fn, variant: Variant, *, first_order: bool, mesh: Mesh | None = None):
    """Jitted ``(state, batch, key) -> (state, metrics)`` with the state donated; with a
    ``mesh`` the batch's task axis is split over its devices, the rest replicated."""
    task_loss = make_maml_task_loss(loss_fn, steps=1, step_size=STEP_SIZE, first_order=first_order)
    step = make_meta_train_step(task_loss, optax.adam(LEARNING_RATE), strategy=variant.strategy)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    return sharded_jit(step, mesh, 3, batch_argnums=(1,), donate_argnums=0)


class Runner:
    """A compiled dmeta step and the state it advances, callable with no arguments."""

    def __init__(self, loss_fn, variant: Variant, theta: Params, batch: TaskBatch, *, first_order):
        self.variant, self.batch, self.key = variant, batch, jax.random.key(1)
        self.state = init_train_state(
            init_meta_params(jax.tree.map(jnp.copy, theta)),
            optax.adam(LEARNING_RATE),
            jax.random.key(0),
        )
        mesh = data_mesh(variant.devices) if variant.devices > 1 else None
        if mesh is not None:
            self.state, self.key = replicate((self.state, self.key), mesh)
            self.batch = shard_batch(batch, mesh)
        with jax.default_matmul_precision(variant.precision):
            self.step = (
                make_step(loss_fn, variant, first_order=first_order, mesh=mesh)
                .lower(self.state, self.batch, self.key)
                .compile(compiler_options=variant.compiler_options)
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
DEVICES_HINT = "on a CPU: --host-devices {n}"


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


def metrics_rel_diff(metrics: dict[str, Array], reference: dict[str, Array]) -> float:
    """Largest ``|metric / reference - 1|`` over the grad norm, query and support losses."""
    return max(
        abs(float(metrics[k]) / float(reference[k]) - 1.0)
        for k in ("grad_norm", "query_loss", "support_loss")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
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
        "--host-devices",
        type=int,
        default=None,
        help="simulated CPU devices for the _Ndev variants (e.g. the core count; default: "
        "what JAX sees)",
    )
    add_peer_args(parser, checked="meta-gradient", rtol="--grad-rtol")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: the shape, timed repeats, torch peers and dmeta variants."""

    shape: Shape
    repeats: int
    peers: list[str]
    second_order: tuple[Variant, ...]
    first_order: tuple[Variant, ...]
    skipped: tuple[str, ...] = ()


def make_plan(args: argparse.Namespace) -> Plan:
    """The ``Plan`` of the parsed command line; exits on an unknown peer or variant."""
    shape = QUICK if args.quick else Shape()
    if args.tasks is not None:
        shape = dataclasses.replace(shape, tasks=args.tasks)
    peers = [
        p for p in args.peers.split(",") if p and not (args.no_compile and p == "func_compile")
    ]
    unknown = sorted(set(peers) - set(TORCH_PEERS))
    if unknown:
        raise SystemExit(f"unknown torch peers {unknown}; known: {TORCH_PEERS}")
    n_devices = jax.device_count()
    if args.variants:
        second_order = tuple(variant_named(n) for n in args.variants.split(","))
        for v in second_order:
            if v.devices > n_devices:
                raise SystemExit(f"variant {v.name} needs {v.devices} devices, {n_devices} visible"
                                 f" ({DEVICES_HINT.format(n=v.devices)})")  # fmt: skip
    else:
        second_order = QUICK_SECOND_ORDER if args.quick else SECOND_ORDER
    cpu = jax.default_backend() == "cpu"
    runs = tuple(v for v in second_order if v.devices <= n_devices and (cpu or not v.dots))
    skipped = tuple(v.name for v in second_order if v not in runs)
    second_order = runs
    first_order = () if args.no_first_order else (QUICK_FIRST_ORDER if args.quick else FIRST_ORDER)
    repeats = args.repeats or (2 if args.quick else 7)
    return Plan(shape, repeats, peers, second_order, first_order, skipped)


def emit_header(emit: Report, args: argparse.Namespace, torch, plan: Plan) -> None:
    """The report's first lines: command, shape, devices, versions, precision, load."""
    shape = plan.shape
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: T={shape.tasks} tasks, {shape.support}+{shape.query} samples, S={shape.seq}, "
        f"F={shape.features}, H={shape.hidden}, 1 inner step, adam; repeats={plan.repeats}"
    )
    tdevice = torch.cuda.get_device_name(0) if args.device == "cuda" else machine()
    emit(
        f"devices: torch {args.device} ({tdevice}); jax {[str(d) for d in jax.devices()]} "
        f"({jax.devices()[0].device_kind})"
    )
    emit(torch_versions(torch))
    if plan.skipped:
        most = max(variant_named(n).devices for n in plan.skipped)
        hint = DEVICES_HINT.format(n=most) + "; _dot variants: CPU only"
        emit(f"variants_skipped: {','.join(plan.skipped)} ({hint})")
    if args.device == "cuda":
        emit(torch_precision(torch) + " (variants _prec_highest: full f32)")
    emit("load_avg_start", load_average())


class Bench:
    """The inputs every contender shares (weights, batch, the engine's meta-gradient) and the
    contenders built from them.

    Args:
      args: the parsed command line.
      shape: the benchmark shape.
      emit: the report.
      tm: the ``_torch_mpfn`` module (the PyTorch peers).
    """

    def __init__(self, args: argparse.Namespace, shape: Shape, emit: Report, tm):
        self.args, self.shape, self.emit, self.tm = args, shape, emit, tm
        self.apply, self.theta = split_params(
            MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(args.seed))
        )
        self.batch = make_batch(shape, args.seed + 1)
        self.tbatch = tm.batch_to_torch(self.batch, args.device)
        self.grads = dmeta_meta_grads(self.apply, self.theta, self.batch)
        first_order = dmeta_meta_grads(self.apply, self.theta, self.batch, first_order=True)
        emit("meta_grad_second_vs_first_order_rel_diff", max_rel_diff(first_order, self.grads))
        self.contenders = Contenders(emit, keep_going=args.keep_going)
        self.runners: dict[str, Runner] = {}
        self.grad_diffs: list[float] = []

    def add_dmeta(self, name: str, variant: Variant, first_order: bool) -> None:
        """Builds, compiles and warms up the dmeta contender ``name``."""

        def build() -> Runner:
            apply = engine_apply(variant.gru, self.shape, self.args.seed)
            loss_fn = loss_for(variant.gru, apply)
            return Runner(loss_fn, variant, self.theta, self.batch, first_order=first_order)

        runner = self.contenders.add(name, build)
        if runner is not None:
            self.runners[name] = runner

    def add_torch(self, name: str, kind: str, first_order: bool) -> None:
        """Builds and warms up the torch peer ``name``; a second-order one's first
        meta-gradient is checked against the engine's first."""
        self.contenders.add(name, functools.partial(self._torch_step, name, kind, first_order))

    def _torch_step(self, name: str, kind: str, first_order: bool) -> Callable:
        tm, shape, tbatch = self.tm, self.shape, self.tbatch
        model = tm.from_dmeta(
            self.theta, shape.features, shape.hidden, cell=kind != "loop", device=self.args.device
        )
        step = tm.make_peer_step(
            kind, model, step_size=STEP_SIZE, learning_rate=LEARNING_RATE, first_order=first_order
        )
        if first_order:
            step(tbatch)
            return functools.partial(step, tbatch)
        tgrads = tm.grads_to_dmeta(self.theta, step.grads(tbatch))
        step.update(tbatch)
        if kind == "func_compile":
            require_whole_graph(name)
        rel, absolute = max_rel_diff(tgrads, self.grads), max_abs_diff(tgrads, self.grads)
        self.emit(f"meta_grad_max_rel_diff_{kind}", rel)
        self.emit(f"meta_grad_max_abs_diff_{kind}", absolute)
        self.grad_diffs.append(rel)
        if not rel <= self.args.grad_rtol:
            raise ValueError(f"{name}: meta-gradient differs from dmeta's by {rel:.3g}")
        return functools.partial(step, tbatch)


def build_contenders(bench: Bench, plan: Plan) -> None:
    """Adds every contender of ``plan`` to ``bench``, torch.compile first (its slow compile
    is out of the way before any timing), and reports how the dmeta variants agree."""
    for kind in sorted(plan.peers, key=lambda k: k != "func_compile"):
        bench.add_torch(f"torch_second_order_{kind}", kind, False)
    if bench.grad_diffs:
        bench.emit("meta_grad_max_rel_diff", max(bench.grad_diffs))
    for first_order, variants in ((False, plan.second_order), (True, plan.first_order)):
        order = "first_order" if first_order else "second_order"
        for v in variants:
            bench.add_dmeta(f"dmeta_{order}_{v.name}", v, first_order)
        if first_order and variants and "loop" in plan.peers:
            bench.add_torch("torch_first_order_loop", "loop", True)
    second = full_f32_variants(bench, bench.runners)
    if second:
        reference = bench.runners[second[0]].first_metrics
        diff = max(metrics_rel_diff(bench.runners[n].first_metrics, reference) for n in second)
        bench.emit("variants_metrics_max_rel_diff", diff)
        if not diff <= bench.args.grad_rtol:
            raise ValueError(f"full-f32 dmeta variants disagree by {diff:.3g}: {second}")


def full_f32_variants(bench: Bench, names) -> list[str]:
    """The second-order dmeta contenders among ``names`` whose matmuls are full f32, the ones
    compared with the (f32) torch peers: reduced-precision variants are timed, not ranked."""
    backend = jax.default_backend()
    return [
        n
        for n in names
        if n.startswith("dmeta_second_order") and bench.runners[n].variant.full_f32(backend)
    ]


def best(prefix: str, seconds: dict[str, float]) -> tuple[str | None, float]:
    """The contender named ``prefix...`` with the least ``seconds`` and those seconds."""
    names = [n for n in seconds if n.startswith(prefix)]
    if not names:
        return None, float("nan")
    name = min(names, key=seconds.get)
    return name, seconds[name]


def emit_flops(emit: Report, bench: Bench, best_so: str, best_torch: str | None) -> None:
    """FLOPs of the best dmeta variant's step and its (and the best peer's) matmul-rate share."""
    medians = bench.contenders.medians
    # the best variant's computation with every scan step unrolled, so that XLA counts them all
    runner = bench.runners[best_so]
    unrolled = dataclasses.replace(runner.variant, gru="unrollfull", strategy="vmap", devices=1)
    # the whole meta-batch on one device: shapes only, whatever devices the runner uses
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), runner.state)
    flops = compiled_flops(
        make_step(loss_for(unrolled.gru, bench.apply), unrolled, first_order=False),
        state,
        bench.batch,
        jax.random.key(1),
    )
    peak = matmul_gflops()
    t_so = medians[best_so]
    emit("flops_per_second_order_step", flops / 1e9, "GFLOP")
    emit("dmeta_second_order_gflops", flops / t_so / 1e9, "GFLOP/s")
    emit("matmul_f32_gflops", peak, "GFLOP/s")
    emit("dmeta_share_of_matmul", 100 * flops / t_so / 1e9 / peak, "%")
    if best_torch:
        emit("best_torch_share_of_matmul", 100 * flops / medians[best_torch] / 1e9 / peak, "%")


def emit_results(emit: Report, bench: Bench, args: argparse.Namespace) -> None:
    """Rates, times to 200 steps, the best contenders, FLOPs and speedups (the last lines)."""
    contenders = bench.contenders
    medians, time_to = contenders.medians, contenders.time_to()
    for name, seconds in medians.items():
        emit(name, 1.0 / seconds, "steps/s")
    for name in medians:
        emit(f"{name}_time_to_{STEPS_TO}_s", time_to[name], "s")
    fair = full_f32_variants(bench, medians)
    best_so, t_so = best("dmeta_second_order", {n: medians[n] for n in fair})
    best_fo, t_fo = best("dmeta_first_order", medians)
    best_torch, _ = best("torch_second_order", medians)
    if best_so:
        emit("best_dmeta_second_order", best_so.removeprefix("dmeta_second_order_"))
    if best_torch:
        emit("best_torch_second_order", best_torch.removeprefix("torch_second_order_"))
    if best_fo and "torch_first_order_loop" in medians:
        emit("speedup_first_order_vs_torch_loop", medians["torch_first_order_loop"] / t_fo)
    if best_so and not args.no_flops:
        emit_flops(emit, bench, best_so, best_torch)
    emit("load_avg_end", load_average())
    if not best_so:
        return
    for kind in ("cell_loop", "loop"):
        if f"torch_second_order_{kind}" in medians:
            emit(f"speedup_vs_torch_{kind}", medians[f"torch_second_order_{kind}"] / t_so)
    if best_torch:
        ours = fair
        peers = [n for n in medians if n.startswith("torch_second_order")]
        contenders.emit_vs_best_torch(ours, peers, speedup_first=True)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark: builds and checks every contender, times them, prints the report."""
    args = parse_args(argv)
    compile_cache = torch_compile_cache(args.warm_compile_cache)
    torch = require("torch")
    from experiments.benchmarks import _torch_mpfn as tm

    torch.set_num_threads(args.threads)
    if args.host_devices:
        use_host_devices(args.host_devices)
    plan = make_plan(args)
    emit = Report()
    emit_header(emit, args, torch, plan)
    emit(compile_cache)
    bench = Bench(args, plan.shape, emit, tm)
    build_contenders(bench, plan)
    bench.contenders.time(plan.repeats)
    emit_results(emit, bench, args)
    emit.save(args.out)


if __name__ == "__main__":
    main()
