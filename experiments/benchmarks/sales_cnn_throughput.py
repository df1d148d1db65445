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
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.sales_cnn.model import PAPER_ORDERS, SalesCNN
from dmeta.sales_cnn.train import Samples, apply_model, make_train_step, split_model
from dmeta.train.state import init_train_state
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    machine,
    require,
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


STEPS_TO = 200  # time_to_200: warm-up (build, compile, first step) + 199 steady-state steps


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a contender that fails (or whose output disagrees) is reported and dropped",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--forward-rtol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    torch = require("torch")
    from experiments.benchmarks import _torch_sales_cnn as tc

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else Shape()
    repeats = args.repeats or (2 if args.quick else 10)
    on_gpu = args.device == "cuda"
    dev = "gpu" if on_gpu else "cpu"  # the suffix of every rate's name
    emit = Report()

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
        emit(
            "precision: torch matmul allow_tf32="
            f"{torch.backends.cuda.matmul.allow_tf32}, cudnn allow_tf32="
            f"{torch.backends.cudnn.allow_tf32}; jax default_matmul_precision="
            f"{getattr(jax.config, 'jax_default_matmul_precision', '?')}"
        )
    emit(
        f"versions: jax {jax.__version__}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    emit("load_avg_start", load_average())

    def attempt(name: str, fn):
        """``fn()``; with ``--keep-going`` a failure is reported as ``name_error: ...``."""
        if not args.keep_going:
            return fn()
        try:
            return fn()
        except Exception as err:  # reported; the other contenders go on
            first = str(err).splitlines()[0][:300] if str(err) else ""
            emit(f"{name}_error: {type(err).__name__}: {first}")
            return None

    def torch_model():
        return tc.TorchSalesCNN(
            shape.indicators,
            shape.length,
            n_inputs=4,
            orders=shape.orders,
            maps=shape.maps,
            hidden=shape.hidden,
            rate=shape.rate,
        )

    graphdef, params = split_model(shape.build(args.seed))
    tmodel = tc.from_dmeta(params, torch_model()).to(args.device)
    n_dmeta = sum(p.size for p in jax.tree.leaves(params))
    n_torch = sum(p.numel() for p in tmodel.parameters())
    emit("dmeta_params", n_dmeta)
    emit("torch_params", n_torch)
    if n_dmeta != n_torch:
        raise SystemExit(f"parameter counts differ: dmeta {n_dmeta}, torch {n_torch}")

    cpu = jax.devices("cpu")[0]
    device = jax.devices()[0] if on_gpu else cpu
    data = jax.device_put(make_samples(shape, args.seed + 1), device)
    x = data.x[: shape.batch]
    forward = jax.jit(functools.partial(apply_model, graphdef))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(forward(jax.device_put(params, device), x))
    tx = torch.from_numpy(np.array(x)).to(args.device)

    def check(name: str, model) -> None:
        """``model``'s eval-mode forward against dmeta's, full f32 (no TF32 on a GPU)."""
        model.eval()
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            theirs = model(tx).cpu().numpy()
        diff = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))
        emit(f"{name}forward_max_rel_diff", diff)
        if not diff <= args.forward_rtol:
            raise ValueError(f"dmeta and torch forward outputs differ by {diff:.3g}")

    check("", tmodel)

    tdata = [torch.from_numpy(np.array(a)).to(args.device) for a in (data.x, data.y, data.w)]
    contenders, warmups = {}, {}

    def add(name: str, build) -> None:
        start = time.perf_counter()
        contender = build()
        contender()  # the first step: compiles
        warmups[name] = time.perf_counter() - start
        contenders[name] = contender
        emit(f"{name}_{dev}_warmup_s", warmups[name], "s")

    def torch_peer(model, *, compile):
        optimizer = torch.optim.Adamax(model.parameters(), lr=LEARNING_RATE)
        step = tc.make_train_step(model, optimizer, batch_size=shape.batch, compile=compile)
        return functools.partial(step, *tdata, shape.pool)

    def compiled_peer():
        model = tc.from_dmeta(params, torch_model()).to(args.device)
        check("torch_compile_", torch.compile(model))  # an inference compile, not timed
        return torch_peer(model, compile=True)

    if not args.no_compile:  # compile first, before any timing
        attempt("torch_compile", lambda: add("torch_compile", compiled_peer))
    attempt("torch", lambda: add("torch", lambda: torch_peer(tmodel, compile=False)))
    graphdef_bf16 = nnx.graphdef(dataclasses.replace(shape, dtype=jnp.bfloat16).build(args.seed))
    for name, g in (("dmeta", graphdef), ("dmeta_bf16", graphdef_bf16)):
        with jax.default_device(device):
            attempt(
                name,
                lambda g=g, name=name: add(
                    name,
                    lambda: DmetaRunner(
                        g,
                        jax.device_put(params, device),
                        data,
                        batch_size=shape.batch,
                        seed=args.seed,
                    ),
                ),
            )
    medians = interleaved_medians(contenders, repeats)
    rates = {name: shape.batch / seconds for name, seconds in medians.items()}
    for name in ("dmeta", "torch", "torch_compile", "dmeta_bf16"):
        if name in rates:
            emit(f"{name}_{dev}_samples_per_s", rates[name], "samples/s")
            emit(f"{name}_{dev}_samples_per_min", 60 * rates[name], "samples/min")
            emit(f"{name}_{dev}_steps_per_s", 1 / medians[name], "steps/s")
            emit(
                f"{name}_{dev}_time_to_{STEPS_TO}_s",
                warmups[name] + (STEPS_TO - 1) * medians[name],
                "s",
            )
    emit(
        "paper_k2200_samples_per_min",
        PAPER_SAMPLES_PER_MIN,
        "samples/min (Keras + Theano on an NVIDIA K2200, reported by the paper, not measured)",
    )
    accelerator = jax.devices()[0]
    if accelerator.platform != "cpu" and not on_gpu:
        gpu = DmetaRunner(
            graphdef,
            params,
            make_samples(shape, args.seed + 1),
            batch_size=shape.batch,
            seed=args.seed,
        )
        seconds = interleaved_medians({"gpu": gpu}, repeats)["gpu"]
        emit(f"dmeta_{accelerator.platform}_samples_per_s", shape.batch / seconds, "samples/s")
        emit(
            f"dmeta_{accelerator.platform}_samples_per_min",
            60 * shape.batch / seconds,
            f"samples/min ({accelerator.device_kind})",
        )
    emit("load_avg_end", load_average())
    peers = [n for n in ("torch", "torch_compile") if n in rates]
    if "dmeta" in rates and peers:
        best = max(peers, key=rates.get)
        if "torch" in rates:
            emit("speedup_vs_torch", rates["dmeta"] / rates["torch"])
        if "dmeta_bf16" in rates:
            emit("speedup_bf16_vs_best_torch", rates["dmeta_bf16"] / rates[best])
        emit("best_torch", best)
        time_to = {n: warmups[n] + (STEPS_TO - 1) * medians[n] for n in medians}
        emit(f"time_to_{STEPS_TO}_vs_best_torch", min(time_to[n] for n in peers) / time_to["dmeta"])
        emit("speedup_vs_best_torch", rates["dmeta"] / rates[best])
    emit.save(args.out)


if __name__ == "__main__":
    main()
