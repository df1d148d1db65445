"""Data parallelism: sharded train steps on 4 simulated CPU devices equal the unsharded ones.

The parent pytest process has JAX initialized with one CPU device, so the multi-device
checks run once in a subprocess (this file as a script) under
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it prints one JSON line of
per-method results that the tests below assert on. For every step it reports the largest
difference between a few sharded and unsharded steps (parameters and losses), how many
devices the batch was split over (read back from the arrays, or, for batches drawn inside
the jitted step, from ``jax.debug.inspect_array_sharding`` on the constrained batch) and
whether the resulting parameters are replicated. The same process checks that ``remat``
(``jax.checkpoint``) leaves RMLDP / STMP gradients unchanged. Compilation dominates the
run time, so the subprocess compiles with ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (the SPMD
partitioner still runs; reference and sharded programs are compiled alike).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmeta.meta.batching import mean_over_tasks
from dmeta.meta.steps import with_sampler
from dmeta.parallel import (
    DATA,
    data_mesh,
    data_parallel,
    jit_step,
    replicate,
    shard_batch,
    sharded_jit,
    use_host_devices,
)
from dmeta.rmldp.model import init_rmldp, make_task_loss, make_train_step
from dmeta.train.state import init_train_state
from dmeta.types import Split, TaskBatch

N_DEVICES = 4
RTOL, ATOL = 1e-5, 1e-6
SIZES = dict(n_features=2, seq_len=4, hidden=4, q_d_dim=3, q_g_dim=2, graph_dim=4)
N_SEG = 6


# ---------------------------------------------------------------- helpers (both processes)


def max_rel_err(got, want, skip: str | None = None) -> float:
    """Largest ``|got - want| / (atol + rtol |want|)`` over all leaves (<= 1 passes).

    Leaves whose path contains ``skip`` are left out.
    """
    errs = [
        np.max(np.abs(np.asarray(g) - np.asarray(w)) / (ATOL + RTOL * np.abs(np.asarray(w))))
        for (path, w), g in zip(
            jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True
        )
        if skip is None or skip not in jax.tree_util.keystr(path)
    ]
    return float(max(errs))


def is_replicated(tree) -> bool:
    """Every leaf is a full copy on every device (also true on a mesh of one)."""
    return all(
        leaf.sharding.is_fully_replicated
        and all(s.data.shape == leaf.shape for s in leaf.addressable_shards)
        for leaf in jax.tree.leaves(tree)
    )


def rmldp_problem(n_tasks: int):
    """A tiny RMLDP variant, its Theta and a sampler of random meta-batches (T = n_tasks)."""
    model, theta = init_rmldp(jax.random.key(0), **SIZES, use_data=False, use_season=False)
    graph = jax.random.normal(jax.random.key(1), (N_SEG, SIZES["graph_dim"]))

    def sample(key):
        k = jax.random.split(key, 7)
        n, s, f = 5, SIZES["seq_len"], SIZES["n_features"]

        def split(k1, k2, k3):
            return Split(
                jax.random.normal(k1, (n_tasks, n, s, f)),
                jax.random.normal(k2, (n_tasks, n, s, f)),
                jax.random.normal(k3, (n_tasks, n)),
                jnp.ones((n_tasks, n)).at[:, -1].set(0.0),
            )

        seg = jax.random.randint(k[6], (n_tasks,), 0, N_SEG)
        return TaskBatch(split(*k[:3]), split(*k[3:6]), seg)

    return model, theta, graph, sample


def run_rmldp(mesh, n_steps: int = 3, **kw):
    """``n_steps`` jitted meta-steps (sampling folded in); returns (params, losses)."""
    model, theta, graph, sample = rmldp_problem(n_tasks=8)
    optimizer = optax.adam(1e-2)
    step = make_train_step(model, graph, optimizer, steps=1, step_size=0.1, mesh=mesh, **kw)
    step = jit_step(with_sampler(step, sample), mesh)
    state = init_train_state(theta, optimizer, jax.random.key(2))
    losses = []
    for _ in range(n_steps):
        state, metrics = step(state)
        losses.append(metrics["loss"])
    return state.params, jnp.stack(losses)


# ---------------------------------------------------------------- worker (4 devices)


class ShardingSpy:
    """Records the shardings the partitioner gives arrays inside jitted steps.

    ``record(tree)`` inspects a batch seen by a loss function; used as a context manager it
    also inspects the result of every ``with_sharding_constraint`` (batches drawn in a step).
    """

    def __init__(self):
        self.seen: list[tuple[tuple[int, ...], int, tuple[int, ...]]] = []
        self._orig = jax.lax.with_sharding_constraint

    def record(self, tree):
        for leaf in jax.tree.leaves(tree):
            jax.debug.inspect_array_sharding(
                leaf, callback=functools.partial(self._record, tuple(leaf.shape))
            )
        return tree

    def _record(self, shape, sharding):
        self.seen.append((shape, len(sharding.device_set), tuple(sharding.shard_shape(shape))))

    def _constrain(self, tree, shardings):
        return self.record(self._orig(tree, shardings))

    def summary(self) -> dict:
        """Device counts and (full, per-device) leading sizes of the inspected leaves."""
        return {
            "batch_devices": sorted({n for _, n, _ in self.seen}),
            "leading": sorted({(s[0], p[0]) for s, _, p in self.seen if s}),
        }

    def __enter__(self):
        self.seen.clear()
        jax.lax.with_sharding_constraint = self._constrain
        return self

    def __exit__(self, *exc):
        jax.lax.with_sharding_constraint = self._orig


def layout(tree) -> str:
    """``"replicated"``, ``"split"`` (leading axis over all devices) or ``"other"``."""
    if is_replicated(tree):
        return "replicated"
    split = all(
        len(leaf.sharding.device_set) == jax.device_count()
        and leaf.sharding.shard_shape(leaf.shape)[0] * jax.device_count() == leaf.shape[0]
        for leaf in jax.tree.leaves(tree)
    )
    return "split" if split else "other"


def compare(spy, want, got, skip: str | None = None) -> dict:
    """``want`` / ``got``: (params, losses) of the unsharded and sharded runs."""
    return dict(
        spy.summary(),
        param_err=max_rel_err(got[0], want[0], skip),
        loss_err=max_rel_err(got[1], want[1]),
        params_layout=layout(got[0]),
    )


def check_rmldp(mesh, spy) -> dict:
    want = run_rmldp(None)
    with spy:
        return compare(spy, want, run_rmldp(mesh))


def stmp_problem():
    """A tiny STMP (window 7, latent 2, hidden 4) on a 4-region synthetic panel."""
    from dmeta.stmp import data as stmp_data
    from dmeta.stmp import model as stmp_model

    data = stmp_data.make_synthetic(n_regions=4, n_days=120, n_festivals=1, seed=1)
    prep = stmp_data.prepare(data, cutoff=90, window=7)
    graphdef, params = stmp_model.build(
        window=7, period=7, n_types=data.n_types, n_attrs=data.attrs.shape[1],
        n_regions=len(data.regions), latent=2, hidden=4,
    )  # fmt: skip
    return graphdef, params, prep


def check_stmp(mesh, spy) -> dict:
    from dmeta.stmp import train as stmp_train

    graphdef, params, prep = stmp_problem()

    def run(shard):
        fitted, history = stmp_train.fit(
            graphdef, jax.tree.map(jnp.copy, params), prep, key=jax.random.key(0), n_steps=3,
            log_every=1, shard=shard, n_tasks=8, n_query=2, n_context=4, n_samples=2,
        )  # fmt: skip
        return fitted, np.array([row["loss"] for row in history])

    want = run(False)
    with spy:
        return compare(spy, want, run(True))


def check_cdltvs(mesh, spy) -> dict:
    """Stage 2 (eq. 17: InfoNCE and type alignment couple the rows of a batch), one epoch."""
    from dmeta.ltv.data import apply_sparsity, make_synthetic, split_customers
    from dmeta.ltv.train import _model, cdltvs_fns, fit, model_batch
    from dmeta.nn.functional import split_params

    data = apply_sparsity(make_synthetic(60, n_periods=4, horizon=1, seed=0), 0.5, seed=0)
    train, val = (model_batch(d, 1.0, 1.0) for d in split_customers(data, seed=0)[:2])
    arch = ((8, 5), 2, (4, 5), 1, 8, 4, 1, 1, True)  # ..., tcn_levels, portrait
    fns = cdltvs_fns(arch, k=2, temperature=1.0, margin=0.1)
    _, params = split_params(_model(arch, 2, 0))

    def run(loss_fn, shard):
        res = fit(loss_fn, fns.predict, params, train, val, label="t_y", desc="cdltvs stage2",
                  batch_size=16, max_epochs=1, drop_epoch=1, shard=shard)  # fmt: skip
        return res.best_state.params, np.array([res.history[0]["loss"]])

    def spied(p, batch, lambdas):
        return fns.stage2(p, spy.record(batch), lambdas)

    want = run(fns.stage2, False)
    with spy:
        return compare(spy, want, run(spied, True))


def sales_cnn_problem(n_regions: int = N_DEVICES, n: int = 12):
    """A tiny SalesCNN (D=5 indicators, T=8 days) and region-stacked random ``Samples``."""
    from flax import nnx

    from dmeta.sales_cnn.model import SalesCNN
    from dmeta.sales_cnn.train import Samples, split_model

    graphdef, params = split_model(SalesCNN(5, 8, maps=3, hidden=8, rngs=nnx.Rngs(0)))
    k_x, k_y = jax.random.split(jax.random.key(1))
    data = Samples(
        x=jax.random.normal(k_x, (n_regions, n, 4, 5, 8)),
        y=jax.random.normal(k_y, (n_regions, n)),
        w=jnp.ones((n_regions, n)),
        n=jnp.arange(n - n_regions + 1, n + 1, dtype=jnp.int32),  # unequal, padded sizes
    )
    return graphdef, params, data


SALES_OPTS = dict(learning_rate=1e-2, batch_size=8, n_steps=4, eval_every=2)  # 2 chunks


def sales_fitted(res) -> tuple:
    """(final params, per-row mean losses) of a Sales CNN ``FitResult``."""
    return res.state.params, np.array([row["loss"] for row in res.history])


def check_sales_cnn(mesh, spy) -> dict:
    """Pooled training (the pretraining stage): each drawn minibatch split over devices."""
    from dmeta.sales_cnn.train import fit

    graphdef, params, data = sales_cnn_problem()
    pooled = jax.tree.map(lambda a: a[-1], data)
    want = sales_fitted(fit(graphdef, params, pooled, jax.random.key(2), **SALES_OPTS))
    with spy:
        got = fit(graphdef, params, pooled, jax.random.key(2), **SALES_OPTS, shard=True)
    return compare(spy, want, sales_fitted(got))


def check_sales_cnn_regions(mesh, spy) -> dict:
    """Per-region transfer: regions (parameters, data, results) split over devices."""
    from dmeta.sales_cnn.train import broadcast_params, fit_regions

    graphdef, params, data = sales_cnn_problem()
    start = broadcast_params(params, N_DEVICES)
    want = fit_regions(graphdef, start, data, jax.random.key(2), **SALES_OPTS)
    got = fit_regions(graphdef, start, data, jax.random.key(2), **SALES_OPTS, shard=True)
    res = compare(spy, sales_fitted(want), sales_fitted(got))
    placed = [
        (leaf.shape[0], leaf.sharding.shard_shape(leaf.shape)[0], len(leaf.sharding.device_set))
        for leaf in jax.tree.leaves((got.state.params, got.state.opt_state, got.state.key))
    ]
    return dict(
        res,
        leading=sorted({(full, per) for full, per, _ in placed}),
        batch_devices=sorted({n for *_, n in placed}),
    )


def check_c2m(mesh, spy) -> dict:
    """C2M pretraining (Algorithm 1, step 1): each batch of users split over devices."""
    import dataclasses

    from dmeta.c2m import train as c2m_train
    from dmeta.c2m.sequences import BEHAVIOR_VOCAB, build_sequences, build_vocabulary
    from dmeta.c2m.synthetic import synthetic_c2m

    events = synthetic_c2m(n_users=24, n_segments=2, mean_events=8, n_purchases=2, seed=0)
    events = events.log.events
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=16)
    cats = build_vocabulary(events["category_id"].to_numpy())
    seqs = build_sequences(events, max_len=12, items=items, categories=cats)
    ae = c2m_train.init_autoencoder(
        jax.random.key(0), n_behaviors=BEHAVIOR_VOCAB.size, n_items=items.size,
        n_categories=cats.size, d_model=8, n_heads=2, n_layers=1, latent_dim=2,
    )  # fmt: skip
    spied = dataclasses.replace(ae, apply=lambda p, x, m: ae.apply(p, spy.record(x), m))

    def run(model, shard):
        params, history = c2m_train.pretrain(
            model, ae.params, seqs.features(), seqs.mask, epochs=1, batch_size=8,
            learning_rate=1e-2, key=jax.random.key(1), shard=shard,
        )  # fmt: skip
        return params, np.array([history[0]["reconstruction"]])

    want = run(ae, False)
    with spy:
        got = run(spied, True)
    # The attention key bias adds q.b to every logit of a query's softmax: its true gradient
    # is exactly 0, so both runs' gradients are rounding noise, which Adam scales to +-lr
    # steps (that change no output). Every other parameter must agree.
    return compare(spy, want, got, skip="['key']['bias']")


CHECKS = {
    "rmldp": check_rmldp,
    "stmp": check_stmp,
    "cdltvs": check_cdltvs,
    "sales_cnn": check_sales_cnn,
    "sales_cnn_regions": check_sales_cnn_regions,
    "c2m": check_c2m,
}
PARAMS_LAYOUT = {"sales_cnn_regions": "split"}  # the others: replicated


def remat_rmldp() -> dict:
    """Meta-gradients of 3 inner steps with and without ``jax.checkpoint`` per step."""
    model, theta, graph, sample = rmldp_problem(n_tasks=3)
    tasks = sample(jax.random.key(3))

    def grads(remat):
        task_loss = make_task_loss(model, graph, steps=3, step_size=0.1, remat=remat)
        objective = lambda p: mean_over_tasks(task_loss, p, tasks, jax.random.key(4))[0]  # noqa: E731
        return jax.jit(jax.grad(objective))(theta)

    want = grads(False)
    return {"grad_err": max_rel_err(grads(True), want), "grad_norm": float(optax.tree.norm(want))}


def remat_stmp() -> dict:
    """One STMP step (SGD, so the update is the gradient) with and without remat."""
    from dmeta.stmp import train as stmp_train

    graphdef, params, prep = stmp_problem()
    optimizer = optax.sgd(1.0)

    def update(remat):
        fn = stmp_train.make_train_step(
            graphdef, optimizer, n_tasks=2, n_query=2, n_context=4, n_samples=2, remat=remat
        )
        state = init_train_state(params, optimizer, jax.random.key(0))
        state, metrics = jax.jit(fn)(state, prep.arrays, prep.index)
        return jax.tree.map(jnp.subtract, state.params, params), metrics["grad_norm"]

    (want, norm), (got, _) = update(False), update(True)
    return {"grad_err": max_rel_err(got, want), "grad_norm": float(norm)}


def indivisible_errors(mesh) -> list[str]:
    """The messages ``shard_batch`` and a sharded step give for a batch of 6 on 4 devices."""
    from dmeta.parallel import data_parallel, shard_batch

    step = data_parallel(lambda w, b: w * b["x"].sum(), mesh, batch_argnums=(1,))
    messages = []
    for call in (
        lambda: shard_batch({"x": jnp.ones((6, 3))}, mesh),
        lambda: step(jnp.ones(()), {"x": jnp.ones((6, 3))}),
    ):
        try:
            call()
            messages.append("no error")
        except ValueError as e:
            messages.append(str(e))
    return messages


def worker() -> dict:
    assert jax.device_count() == N_DEVICES, jax.devices()
    mesh, spy = data_mesh(), ShardingSpy()
    out = {}
    for name, check in CHECKS.items():
        start = time.perf_counter()
        out[name] = dict(check(mesh, spy), seconds=round(time.perf_counter() - start, 1))
    out["errors"] = indivisible_errors(mesh)
    out["remat_rmldp"], out["remat_stmp"] = remat_rmldp(), remat_stmp()
    return out


# ---------------------------------------------------------------- tests (parent, 1 device)


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEVICES}",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # compile time dominates; both runs alike
    )
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CHECKS))
def test_sharded_step_equals_unsharded(results, name):
    res = results[name]
    assert res["param_err"] <= 1.0, res  # in units of atol + rtol |want|
    assert res["loss_err"] <= 1.0, res
    assert res["params_layout"] == PARAMS_LAYOUT.get(name, "replicated"), res
    assert res["batch_devices"] == [N_DEVICES], res
    # the task / batch axis really is split: each device holds 1/4 of it
    assert res["leading"] and all(full == N_DEVICES * per for full, per in res["leading"]), res


def test_indivisible_batch_names_the_axis_size(results):
    for message in results["errors"]:
        assert "size 6" in message and "4 devices" in message and "['x']" in message, message


def test_mesh_of_one_device_runs_the_same_step():
    mesh = data_mesh()
    assert mesh.shape == {DATA: 1}
    with pytest.raises(ValueError, match="1 device"):
        data_mesh(2)
    optimizer = optax.adam(0.1)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch["x"] @ p - batch["y"]) ** 2))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jnp.zeros(3)
    batch = {"x": jax.random.normal(jax.random.key(0), (8, 3)), "y": jnp.arange(8.0)}
    placed = (*replicate((params, optimizer.init(params)), mesh), shard_batch(batch, mesh))
    ahead_of_time = sharded_jit(step, mesh, 3, batch_argnums=(2,)).lower(*placed).compile()
    runs = []
    for fn in (jax.jit(step), data_parallel(step, mesh, batch_argnums=(2,)), ahead_of_time):
        p, s, b = placed
        for _ in range(3):
            p, s, loss = fn(p, s, b)
        runs.append((p, loss))
    for run in runs[1:]:
        chex.assert_trees_all_close(run, runs[0], rtol=RTOL, atol=ATOL)
        assert is_replicated(run[0]) and run[0].sharding.mesh == mesh


def test_host_devices_after_the_backend_started_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    n = jax.device_count()
    use_host_devices(n)  # what it already runs with: fine
    with pytest.raises(ValueError, match=f"{n + 1} host devices asked for, but .* runs with {n}"):
        use_host_devices(n + 1)


@pytest.mark.parametrize("name", ["rmldp", "stmp"])
def test_remat_gives_identical_gradients(results, name):
    res = results[f"remat_{name}"]
    assert res["grad_err"] <= 0.1, res  # within 1e-6 relative
    assert res["grad_norm"] > 0, res


if __name__ == "__main__":
    print(json.dumps(worker()))
