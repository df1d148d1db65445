"""Sales CNN training throughput: the dmeta train step against PyTorch, same machine, one run.

Paper-size network (Zhao & Wang, section 4.4): four d x T indicator matrices with d = 25
indicators (CaiNiao) and T = 84 days, K = 128 maps per order, (filter, pool) = (7,7), (4,4),
(3,3), dense n = 1024, dropout 0.2, Adamax, batch 128. dmeta runs the library's
``dmeta.sales_cnn.train.make_train_step`` jitted with the state donated; PyTorch runs the same
network written with grouped ``nn.Conv1d`` (``_torch_sales_cnn.py``). Both draw a minibatch
from the same sample pool, apply dropout, the weighted MSE (eq. 19), backward and an Adamax
update. Parameter counts and, with dmeta's weights copied over, forward outputs are checked to
agree before anything is timed. Repeats are interleaved and medians reported, with the load
average, because the CPU is shared. The same step with bfloat16 compute (``SalesCNN(dtype=...)``,
float32 parameters) is timed alongside as ``dmeta_bf16_cpu_samples_per_s``; it is for GPU/TPU,
where bf16 has matrix units (XLA on this CPU emulates it). A second PyTorch peer,
``torch_compile``, runs the same step with the loss (forward and backward) under
``torch.compile`` (``--no-compile`` skips it); its eval-mode output is checked too. With
``--device cuda`` torch runs on CUDA, JAX on its default device (the GPU), and every rate is
named ``*_gpu_*`` instead of ``*_cpu_*``. Each contender also gets ``_warmup_s`` (build,
compile, first step) and ``_time_to_200_s`` (warm-up + 199 steady-state steps). One line per
figure (``name: value unit``); ``speedup_vs_torch: X`` is dmeta's samples/s over the eager
peer's, and the last line is ``speedup_vs_best_torch: X`` (over the faster torch peer's).

    .venv/bin/python experiments/benchmarks/sales_cnn_throughput.py \
        --out experiments/results/benchmarks/sales_cnn_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.sales_cnn.model import PAPER_ORDERS, SalesCNN
from dmeta.sales_cnn.train import Samples, apply_model, make_train_step, split_model
from dmeta.train.state import init_train_state
from experiments.benchmarks.common import (
    STEPS_TO,
    Contenders,
    Report,
    add_peer_args,
    interleaved_medians,
    load_average,
    machine,
    require,
    require_whole_graph,
    torch_compile_cache,
    torch_precision,
    torch_versions,
)

LEARNING_RATE = 2e-3  # Adamax default (Keras and torch)
PAPER_SAMPLES_PER_MIN = 73_000  # section 4.5: Keras + Theano on one NVIDIA K2200


@dataclasses.dataclass(frozen=True)
class Shape:
    """Benchmark shape: B batch, D indicators, T frame length, K maps, n hidden, N pool rows."""

    batch: int = 128
    indicators: int = 25
    length: int = 84
    maps: int = 128
    hidden: int = 1024
    rate: float = 0.2
    pool: int = 1024
    orders: tuple[tuple[int, int], ...] = PAPER_ORDERS
    dtype: type = jnp.float32  # compute dtype; parameters stay float32

    def build(self, seed: int) -> SalesCNN:
        """The library's network at this shape."""
        return SalesCNN(
            self.indicators,
            self.length,
            orders=self.orders,
            maps=self.maps,
            hidden=self.hidden,
            rate=self.rate,
            dtype=self.dtype,
            rngs=nnx.Rngs(seed),
        )


QUICK = Shape(batch=8, indicators=3, length=12, maps=4, hidden=16, pool=32)


def make_samples(shape: Shape, seed: int) -> Samples:
    """Gaussian z-scored frames f32[N, 4, D, T], targets, weights in [0.35, 1] (eq. 18 range)."""
    kx, ky, kw = jax.random.split(jax.random.key(seed), 3)
    n = shape.pool
    return Samples(
        x=jax.random.normal(kx, (n, 4, shape.indicators, shape.length)),
        y=jax.random.normal(ky, (n,)),
        w=jax.random.uniform(kw, (n,), minval=0.35, maxval=1.0),
        n=jnp.asarray(n, jnp.int32),
    )


class DmetaRunner:
    """The library's train step, jitted with the state donated, callable with no arguments."""

    def __init__(self, graphdef, params, data: Samples, *, batch_size: int, seed: int):
        optimizer = optax.adamax(LEARNING_RATE)
        self.data = data
        self.state = init_train_state(
            jax.tree.map(jnp.copy, params), optimizer, jax.random.key(seed)
        )
        step = make_train_step(graphdef, optimizer, batch_size=batch_size)
        self.step = jax.jit(step, donate_argnums=0).lower(self.state, data).compile()

    def __call__(self):
        self.state, loss = self.step(self.state, self.data)
        return jax.block_until_ready(loss)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: JAX and torch on the CPU; cuda: torch on CUDA, JAX on its default device",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    add_peer_args(parser, checked="output", rtol="--forward-rtol")
    return parser.parse_args(argv)


def emit_header(emit: Report, torch, shape: Shape, repeats: int, on_gpu: bool) -> None:
    """The report's first lines: command, shape, machine, devices, precision, versions, load."""
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: B={shape.batch}, 4 matrices x D={shape.indicators} x T={shape.length}, "
        f"K={shape.maps}, orders={shape.orders}, n={shape.hidden}, dropout {shape.rate}, "
        f"adamax, pool {shape.pool} samples; repeats={repeats}"
    )
    emit(f"machine: {machine()}; jax devices: {[str(d) for d in jax.devices()]}")
    if on_gpu:
        emit(
            f"devices: torch cuda ({torch.cuda.get_device_name(0)}); "
            f"jax {jax.devices()[0].device_kind}"
        )
        emit(torch_precision(torch))
    emit(torch_versions(torch))
    emit("load_avg_start", load_average())


class Bench:
    """The shared weights and sample pool, the checked torch model, and the contenders.

    Building it emits the parameter counts and the eval-mode forward check; it exits if the
    counts differ and raises if the forward outputs do.

    Args:
      args: the parsed command line.
      shape: the benchmark shape.
      emit: the report.
      torch: the ``torch`` module.
      tc: the ``_torch_sales_cnn`` module (the PyTorch peer).
    """

    def __init__(self, args: argparse.Namespace, shape: Shape, emit: Report, torch, tc):
        self.args, self.shape, self.emit, self.torch, self.tc = args, shape, emit, torch, tc
        self.graphdef, self.params = split_model(shape.build(args.seed))
        self.tmodel = tc.from_dmeta(self.params, self.torch_model()).to(args.device)
        n_dmeta = sum(p.size for p in jax.tree.leaves(self.params))
        n_torch = sum(p.numel() for p in self.tmodel.parameters())
        emit("dmeta_params", n_dmeta)
        emit("torch_params", n_torch)
        if n_dmeta != n_torch:
            raise SystemExit(f"parameter counts differ: dmeta {n_dmeta}, torch {n_torch}")
        cpu = jax.devices("cpu")[0]
        self.device = jax.devices()[0] if args.device == "cuda" else cpu
        self.data = jax.device_put(make_samples(shape, args.seed + 1), self.device)
        x = self.data.x[: shape.batch]
        forward = jax.jit(functools.partial(apply_model, self.graphdef))
        with jax.default_matmul_precision("highest"):
            self.ours = np.asarray(forward(jax.device_put(self.params, self.device), x))
        self.tx = torch.from_numpy(np.array(x)).to(args.device)
        self.check("", self.tmodel)
        self.tdata = [
            torch.from_numpy(np.array(a)).to(args.device)
            for a in (self.data.x, self.data.y, self.data.w)
        ]
        dev = "gpu" if args.device == "cuda" else "cpu"  # the suffix of every rate's name
        self.contenders = Contenders(emit, keep_going=args.keep_going, suffix=f"_{dev}")

    def torch_model(self):
        """A fresh PyTorch network at the benchmark shape."""
        shape = self.shape
        return self.tc.TorchSalesCNN(
            shape.indicators,
            shape.length,
            n_inputs=4,
            orders=shape.orders,
            maps=shape.maps,
            hidden=shape.hidden,
            rate=shape.rate,
        )

    def check(self, name: str, model) -> None:
        """``model``'s eval-mode forward against dmeta's, full f32 (no TF32 on a GPU)."""
        torch = self.torch
        model.eval()
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            theirs = model(self.tx).cpu().numpy()
        diff = float(np.max(np.abs(self.ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))
        self.emit(f"{name}forward_max_rel_diff", diff)
        if not diff <= self.args.forward_rtol:
            raise ValueError(f"dmeta and torch forward outputs differ by {diff:.3g}")

    def torch_peer(self, model, *, compile: bool):
        """The PyTorch train step of ``model`` (under torch.compile with ``compile``)."""
        optimizer = self.torch.optim.Adamax(model.parameters(), lr=LEARNING_RATE)
        step = self.tc.make_train_step(
            model, optimizer, batch_size=self.shape.batch, compile=compile
        )
        return functools.partial(step, *self.tdata, self.shape.pool)

    def compiled_peer(self):
        """The torch.compile peer, its eval-mode output checked first (not timed)."""
        model = self.tc.from_dmeta(self.params, self.torch_model()).to(self.args.device)
        self.check("torch_compile_", self.torch.compile(model))  # an inference compile
        step = self.torch_peer(model, compile=True)
        step()  # compiles the training forward and backward
        require_whole_graph("torch_compile")
        return step

    def dmeta_runner(self, graphdef) -> DmetaRunner:
        """The library's train step of ``graphdef`` on the shared weights and pool."""
        params = jax.device_put(self.params, self.device)
        return DmetaRunner(
            graphdef, params, self.data, batch_size=self.shape.batch, seed=self.args.seed
        )


def build_contenders(bench: Bench) -> None:
    """Adds the torch peers (compiled first, before any timing), dmeta and dmeta bf16."""
    add, shape, seed = bench.contenders.add, bench.shape, bench.args.seed
    if not bench.args.no_compile:
        add("torch_compile", bench.compiled_peer)
    add("torch", lambda: bench.torch_peer(bench.tmodel, compile=False), first_step=True)
    graphdef_bf16 = nnx.graphdef(dataclasses.replace(shape, dtype=jnp.bfloat16).build(seed))
    for name, g in (("dmeta", bench.graphdef), ("dmeta_bf16", graphdef_bf16)):
        with jax.default_device(bench.device):
            add(name, functools.partial(bench.dmeta_runner, g), first_step=True)


def emit_rates(emit: Report, bench: Bench) -> dict[str, float]:
    """Samples/s, samples/min, steps/s and time to 200 steps of each contender; its rates."""
    contenders, suffix = bench.contenders, bench.contenders.suffix
    medians, time_to = contenders.medians, contenders.time_to()
    rates = {name: bench.shape.batch / seconds for name, seconds in medians.items()}
    for name in ("dmeta", "torch", "torch_compile", "dmeta_bf16"):
        if name in rates:
            emit(f"{name}{suffix}_samples_per_s", rates[name], "samples/s")
            emit(f"{name}{suffix}_samples_per_min", 60 * rates[name], "samples/min")
            emit(f"{name}{suffix}_steps_per_s", 1 / medians[name], "steps/s")
            emit(f"{name}{suffix}_time_to_{STEPS_TO}_s", time_to[name], "s")
    emit(
        "paper_k2200_samples_per_min",
        PAPER_SAMPLES_PER_MIN,
        "samples/min (Keras + Theano on an NVIDIA K2200, reported by the paper, not measured)",
    )
    return rates


def emit_accelerator(emit: Report, bench: Bench, repeats: int) -> None:
    """dmeta's rate on JAX's accelerator, where torch ran on the CPU but JAX has one."""
    accelerator, shape, seed = jax.devices()[0], bench.shape, bench.args.seed
    if accelerator.platform == "cpu" or bench.args.device == "cuda":
        return
    gpu = DmetaRunner(
        bench.graphdef,
        bench.params,
        make_samples(shape, seed + 1),
        batch_size=shape.batch,
        seed=seed,
    )
    seconds = interleaved_medians({"gpu": gpu}, repeats)["gpu"]
    emit(f"dmeta_{accelerator.platform}_samples_per_s", shape.batch / seconds, "samples/s")
    emit(
        f"dmeta_{accelerator.platform}_samples_per_min",
        60 * shape.batch / seconds,
        f"samples/min ({accelerator.device_kind})",
    )


def emit_speedups(emit: Report, bench: Bench, rates: dict[str, float]) -> None:
    """dmeta against the eager and the best torch peer (the last lines)."""
    peers = [n for n in ("torch", "torch_compile") if n in rates]
    if "dmeta" not in rates or not peers:
        return
    best = max(peers, key=rates.get)
    if "torch" in rates:
        emit("speedup_vs_torch", rates["dmeta"] / rates["torch"])
    if "dmeta_bf16" in rates:
        emit("speedup_bf16_vs_best_torch", rates["dmeta_bf16"] / rates[best])
    emit("best_torch", best)
    bench.contenders.emit_vs_best_torch(["dmeta"], peers, speedup_first=False)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark: builds and checks every contender, times them, prints the report."""
    args = parse_args(argv)
    compile_cache = torch_compile_cache(args.warm_compile_cache)
    torch = require("torch")
    from experiments.benchmarks import _torch_sales_cnn as tc

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else Shape()
    repeats = args.repeats or (2 if args.quick else 10)
    emit = Report()
    emit_header(emit, torch, shape, repeats, on_gpu=args.device == "cuda")
    emit(compile_cache)
    bench = Bench(args, shape, emit, torch, tc)
    build_contenders(bench)
    bench.contenders.time(repeats)
    rates = emit_rates(emit, bench)
    emit_accelerator(emit, bench, repeats)
    emit("load_avg_end", load_average())
    emit_speedups(emit, bench, rates)
    emit.save(args.out)


if __name__ == "__main__":
    main()
