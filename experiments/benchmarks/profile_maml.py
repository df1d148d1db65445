"""What bounds the second-order MAML step on the MPFN shape: matmul shapes and pass counts.

After the inner step every task has its own parameters, so the query pass and the
second-order backward multiply each task's ``[N, H]`` states by *its own* ``[H, 3H]`` GRU
weights: ``T`` small matmuls of ``N = 16`` rows instead of one of ``T * N`` rows. This script
measures, on the shape of ``maml_throughput.py`` (32 tasks, 16 + 16 samples, S = 30, F = 48,
H = 128, one inner step):

- f32 matmul rates: a large square ``[2048, 2048]^2`` (the machine's peak), the GRU's hidden
  matmul with weights shared by all tasks ``[T*N, H] @ [H, 3H]`` (support pass from theta),
  and with per-task weights ``T x [N, H] @ [H, 3H]`` (query pass and backward);
- the step's time split: forward of the query loss over all tasks, the first-order step and
  the second-order step (the engine's ``vmap`` path), with their GFLOP/s;
- the second-order meta-step of every MPFN GRU implementation (``MPFN(gru_impl=...)``:
  ``scan``, autodiff of a ``lax.scan``; ``fused``, ``dmeta.nn.fused_gru``'s custom VJP, the
  default) and of ``fused`` compiled with
  XLA CPU fast math, each built from ``make_meta_train_step(make_maml_task_loss(...))``,
  interleaved, as ``meta_step_<variant>_steps_per_s`` rows with their share of the f32 matmul
  rate (FLOPs counted on the scan GRU fully unrolled, the same for every variant);
- the same ``fused`` step with XLA CPU's library rewriters handing dots to XNNPACK, YNNPACK
  or oneDNN (``fused_*_dot``), and, when PyTorch is installed, the two GRU matmuls in
  PyTorch (``torch_matmul_*``: what the compiled peer's products run at).

Feeds ``experiments/results/profiling.md``.

    .venv/bin/python experiments/benchmarks/profile_maml.py \
        --out experiments/results/benchmarks/profile_maml.txt
"""

from __future__ import annotations

import argparse
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
from dmeta.meta.maml import init_meta_params, make_maml_task_loss
from dmeta.meta.steps import make_meta_train_step
from dmeta.models.mpfn import MPFN, split_loss
from dmeta.nn.functional import split_params
from dmeta.train.state import init_train_state
from experiments.benchmarks.common import (
    Report,
    compiled_flops,
    interleaved_medians,
    load_average,
    machine,
    matmul_gflops,
)
from experiments.benchmarks.maml_throughput import (
    DOT_LIBRARIES,
    LIBRARY_DOT,
    QUICK,
    Runner,
    Shape,
    Variant,
    loss_for,
    make_batch,
    metrics_rel_diff,
)


def matmul_callables(name: str, a, b, library: str) -> dict[str, Callable[[], object]]:
    """``a @ b`` (batched when 3-D) in ``library`` ("jax" or "torch"), keyed by row name;
    empty for torch when it is not installed."""
    if library == "jax":
        dot = jax.jit(jnp.matmul)
        return {f"{name}_gflops": lambda: jax.block_until_ready(dot(a, b))}
    try:
        import torch
    except ImportError:
        return {}
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    return {f"torch_{name}_gflops": lambda: torch.matmul(ta, tb)}


# (name, MPFN gru_impl, XLA compiler options) of the meta-step variants timed below
META_STEP_VARIANTS = (
    ("scan", "scan", {}),
    ("fused", "fused", {}),
    ("fused_fastmath", "fused", {"xla_cpu_enable_fast_math": True}),
    *(
        (f"fused_{lib}_dot", "fused", {option: LIBRARY_DOT})
        for lib, option in DOT_LIBRARIES.items()
    ),
)


class MetaStep:
    """The engine's jitted second-order MAML meta-step (state donated) for one GRU impl."""

    def __init__(self, shape, batch, gru_impl: str, compiler_options: dict):
        model = MPFN(shape.features, shape.hidden, gru_impl=gru_impl, rngs=nnx.Rngs(0))
        apply, theta = split_params(model)
        task_loss = make_maml_task_loss(functools.partial(split_loss, apply), step_size=1e-2)
        optimizer = optax.adam(1e-3)
        step = jax.jit(make_meta_train_step(task_loss, optimizer), donate_argnums=0)
        self.state = init_train_state(init_meta_params(theta), optimizer, jax.random.key(0))
        self.batch, self.key = batch, jax.random.key(1)
        lowered = step.lower(self.state, batch, self.key)
        self.step = lowered.compile(compiler_options=compiler_options or None)
        self.first_metrics = self()

    def __call__(self):
        self.state, metrics = self.step(self.state, self.batch, self.key)
        return jax.block_until_ready(metrics)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--variants",
        default=",".join(v[0] for v in META_STEP_VARIANTS),
        help="comma-separated meta-step variants to time",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def emit_matmul_rates(emit: Report, shape: Shape, args: argparse.Namespace) -> None:
    """Square matmul GFLOP/s and the GRU's matmuls, weights shared or per task, in JAX and
    (when installed) PyTorch."""
    t, n, h = shape.tasks, shape.support, shape.hidden
    key = jax.random.key(0)
    states = jax.random.normal(key, (t, n, h))
    weights = jax.random.normal(key, (t, h, 3 * h))
    emit("matmul_square_gflops", matmul_gflops(256 if args.quick else 2048), "GFLOP/s")
    products = {
        "matmul_gru_shared_weights": (states.reshape(t * n, h), weights[0]),
        "matmul_gru_per_task_weights": (states, weights),
    }
    # one library after the other: PyTorch's OpenMP threads spin-wait after each call and
    # slow an XLA call right behind it, so interleaving the two would time the contention
    seconds = {}
    for library in ("jax", "torch"):
        fns = {
            k: f
            for name, ab in products.items()
            for k, f in matmul_callables(name, *ab, library).items()
        }
        seconds |= interleaved_medians(fns, max(args.repeats, 30))  # ms each: many calls
    shapes = {
        "matmul_gru_shared_weights": f"[{t * n}, {h}] @ [{h}, {3 * h}]",
        "matmul_gru_per_task_weights": f"{t} x [{n}, {h}] @ [{h}, {3 * h}]",
    }
    for key_, value in seconds.items():
        name = key_.removeprefix("torch_").removesuffix("_gflops")
        flops = 2 * products[name][0].size * 3 * h
        emit(key_, flops / value / 1e9, f"GFLOP/s ({shapes[name]})")


def emit_forward_vs_meta(emit: Report, apply, theta, batch, repeats: int) -> None:
    """Seconds of the forward pass, first- and second-order meta-steps, and their ratios."""
    loss_fn = functools.partial(split_loss, apply)
    key = jax.random.key(0)

    def forward(theta, batch):
        task_loss = lambda p, task, key: (loss_fn(p["theta"], task.query), {})  # noqa: E731
        return mean_over_tasks(task_loss, {"theta": theta}, batch, key)[0]

    unrolled = loss_for("unrollfull", apply)
    forward_unrolled = jax.jit(
        lambda theta, batch: jax.vmap(unrolled, in_axes=(None, 0))(theta, batch.query).mean()
    )
    forward_jit = jax.jit(forward)
    runners = {
        "forward": lambda: jax.block_until_ready(forward_jit(theta, batch)),
        "first_order": Runner(loss_fn, Variant(), theta, batch, first_order=True),
        "second_order": Runner(loss_fn, Variant(), theta, batch, first_order=False),
    }
    seconds = interleaved_medians(runners, repeats)
    forward_flops = compiled_flops(forward_unrolled, theta, batch)
    for name, value in seconds.items():
        emit(f"{name}_s", value, "s")
    emit("forward_gflops", forward_flops / seconds["forward"] / 1e9, "GFLOP/s")
    emit("second_order_over_forward", seconds["second_order"] / seconds["forward"])
    emit("second_order_over_first_order", seconds["second_order"] / seconds["first_order"])


def emit_meta_steps(emit: Report, shape: Shape, apply, batch, args: argparse.Namespace) -> None:
    """Every GRU implementation's meta-step, interleaved: agreement, rate, matmul share
    (FLOPs of the unrolled scan step) and speedup over ``scan``."""
    chosen = args.variants.split(",")
    steps = {
        name: MetaStep(shape, batch, impl, opts)
        for name, impl, opts in META_STEP_VARIANTS
        if name in chosen
    }
    reference = next(iter(steps.values())).first_metrics
    for name, step in steps.items():
        emit(f"meta_step_{name}_metrics_rel_diff", metrics_rel_diff(step.first_metrics, reference))
    unrolled = loss_for("unrollfull", apply)
    step_flops = compiled_flops(
        jax.jit(
            make_meta_train_step(make_maml_task_loss(unrolled, step_size=1e-2), optax.adam(1e-3))
        ),
        next(iter(steps.values())).state,
        batch,
        jax.random.key(1),
    )
    peak = matmul_gflops(256 if args.quick else 2048)
    emit("meta_step_flops", step_flops / 1e9, "GFLOP")
    emit("matmul_f32_gflops_now", peak, "GFLOP/s")
    step_seconds = interleaved_medians(steps, args.repeats)
    for name, value in step_seconds.items():
        emit(f"meta_step_{name}_steps_per_s", 1.0 / value, "steps/s")
        emit(f"meta_step_{name}_share_of_matmul", 100 * step_flops / value / 1e9 / peak, "%")
    if "scan" in step_seconds:
        for name, value in step_seconds.items():
            emit(f"meta_step_{name}_speedup_vs_scan", step_seconds["scan"] / value)


def main(argv: list[str] | None = None) -> None:
    """Profiles the MAML meta-step at the benchmark shape and prints the report."""
    args = parse_args(argv)
    shape = QUICK if args.quick else Shape()
    emit = Report()
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(f"shape: {shape}")
    emit(f"machine: {machine()}; jax {jax.__version__}")
    emit("load_avg_start", load_average())
    emit_matmul_rates(emit, shape, args)
    apply, theta = split_params(MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(0)))
    batch = make_batch(shape, 0)
    emit_forward_vs_meta(emit, apply, theta, batch, args.repeats)
    emit_meta_steps(emit, shape, apply, batch, args)
    emit("load_avg_end", load_average())
    emit.save(args.out)


if __name__ == "__main__":
    main()
