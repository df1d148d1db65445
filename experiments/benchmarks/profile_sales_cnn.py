"""Where the Sales CNN train step spends its time: per-order, dense, optimizer, and conv layouts.

Paper-size network (batch 128, 4 matrices x 25 indicators x 84 days, K = 128, orders (7,7),
(4,4), (3,3), n = 1024). Prints the median time of: each order's conv + ReLU + pool forward
and forward + backward; the dense head; the Adamax update; the full forward and forward +
backward; each order's FLOPs (XLA cost analysis) and achieved GFLOP/s; and, for each order,
the same convolution written as one grouped ``lax.conv_general_dilated``
(``feature_group_count = D``) instead of dmeta's im2col + batched matmul, forward and
forward + backward. Feeds
``experiments/results/profiling.md``.

    .venv/bin/python experiments/benchmarks/profile_sales_cnn.py \
        --out experiments/results/benchmarks/profile_sales_cnn.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from dmeta.sales_cnn.model import conv_relu_pool, output_length, wide_conv
from dmeta.sales_cnn.train import apply_model, split_model
from experiments.benchmarks.common import (
    Report,
    compiled_flops,
    interleaved_medians,
    load_average,
    machine,
)
from experiments.benchmarks.sales_cnn_throughput import QUICK, Shape


def grouped_conv(x, kernel, bias):
    """``wide_conv`` as one grouped convolution: x f32[D, B, S, K_in] -> [D, B, S+m-1, K_out]."""
    d, b, s, k_in = x.shape
    m, k_out = kernel.shape[1], kernel.shape[-1]
    inputs = jnp.transpose(x, (1, 2, 0, 3)).reshape(b, s, d * k_in)
    weights = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(m, k_in, d * k_out)
    out = jax.lax.conv_general_dilated(
        inputs,
        weights,
        (1,),
        [(m - 1, m - 1)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=d,
    )
    return out.reshape(b, s + m - 1, d, k_out).transpose(2, 0, 1, 3) + bias[:, None, None, :]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else Shape()
    emit = Report()

    def median(fn, *inputs) -> float:
        jitted = jax.jit(fn)
        return interleaved_medians(
            {"f": lambda: jax.block_until_ready(jitted(*inputs))}, args.repeats
        )["f"]

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(f"shape: {shape}")
    emit(f"machine: {machine()}; jax {jax.__version__}")
    emit("load_avg_start", load_average())
    graphdef, params = split_model(shape.build(0))
    key = jax.random.key(0)
    frames = jax.random.normal(key, (shape.batch, 4, shape.indicators, shape.length))
    y = jnp.zeros(shape.batch)

    def loss(p, x):
        return jnp.mean((apply_model(graphdef, p, x, key) - y) ** 2)

    emit(
        "full_forward_s", median(lambda p, x: apply_model(graphdef, p, x, key), params, frames), "s"
    )
    emit("full_forward_backward_s", median(jax.grad(loss), params, frames), "s")
    optimizer = optax.adamax(2e-3)
    state = optimizer.init(params)
    emit(
        "adamax_update_s",
        median(lambda g, s, p: optimizer.update(g, s, p), params, state, params),
        "s",
    )

    x = jnp.transpose(frames, (2, 0, 3, 1))  # [D, B, T, 4] as in SalesCNN.__call__
    length = shape.length
    for i, ((m, pool), conv) in enumerate(zip(shape.orders, params["convs"].values(), strict=True)):
        kernel, bias = conv["kernel"], conv["bias"]

        def layer(kern, b, inputs, pool=pool):
            return conv_relu_pool(inputs, kern, b, pool)

        # the first order needs no input gradient (the frames are data)
        argnums = (0, 1) if i == 0 else (0, 1, 2)
        grad = jax.grad(lambda *a: jnp.square(layer(*a)).sum(), argnums=argnums)
        flops = compiled_flops(jax.jit(grad), kernel, bias, x)
        fwd, both = median(layer, kernel, bias, x), median(grad, kernel, bias, x)
        emit(f"order{i + 1}_forward_s", fwd, "s")
        emit(f"order{i + 1}_forward_backward_s", both, "s")
        emit(f"order{i + 1}_gflops_per_s", flops / both / 1e9, "GFLOP/s")
        conv_argnums = (1, 2) if i == 0 else (0, 1, 2)  # conv_fn(x, kernel, bias)
        for layout, conv_fn in (("im2col", wide_conv), ("grouped", grouped_conv)):
            conv_grad = jax.grad(
                lambda *a, f=conv_fn: jnp.square(f(*a)).sum(), argnums=conv_argnums
            )
            emit(f"order{i + 1}_{layout}_conv_forward_s", median(conv_fn, x, kernel, bias), "s")
            emit(
                f"order{i + 1}_{layout}_conv_forward_backward_s",
                median(conv_grad, x, kernel, bias),
                "s",
            )
        diff = jnp.abs(grouped_conv(x, kernel, bias) - wide_conv(x, kernel, bias)).max()
        emit(f"order{i + 1}_grouped_vs_im2col_max_abs_diff", float(diff))
        x = layer(kernel, bias, x)
        length = output_length(length, ((m, pool),))

    flat = jnp.transpose(x, (1, 0, 2, 3)).reshape(shape.batch, -1)
    dense = params["dense"]

    def head(p, h):
        return jax.nn.relu(h @ p["kernel"] + p["bias"]).sum()

    emit("dense_forward_backward_s", median(jax.grad(head), dense, flat), "s")
    emit("load_avg_end", load_average())
    emit.save(args.out)


if __name__ == "__main__":
    main()
