"""Meta-learning engine: gradients, batching strategies, Meta-SGD, tracing, modulation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from dmeta.meta.batching import per_task
from dmeta.meta.inner import adapt, adapt_with_support_loss
from dmeta.meta.maml import adapt_tasks, init_meta_params, make_maml_task_loss
from dmeta.meta.modulation import init_modulator, modulate, modulator, unflatten_like
from dmeta.meta.steps import make_meta_train_step, with_sampler
from dmeta.models.mpfn import MPFN, split_loss
from dmeta.nn.functional import split_params
from dmeta.train.state import init_train_state
from dmeta.types import Split, TaskBatch

T, N, S, F, H = 3, 4, 3, 2, 4


def make_split(key, n_tasks=T, n=N, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return Split(
        x_local=jax.random.normal(k1, (n_tasks, n, S, F), dtype),
        x_season=jax.random.normal(k2, (n_tasks, n, S, F), dtype),
        y=jax.random.normal(k3, (n_tasks, n), dtype),
        mask=jnp.ones((n_tasks, n), dtype).at[:, -1].set(0.0),
    )


def make_tasks(key, dtype=jnp.float32):
    ks, kq = jax.random.split(key)
    return TaskBatch(make_split(ks, dtype=dtype), make_split(kq, dtype=dtype), jnp.arange(T))


@pytest.fixture(scope="module")
def model():
    apply, theta = split_params(MPFN(F, H, rngs=nnx.Rngs(0)))
    return apply, theta


def loss_of(apply):
    return functools.partial(split_loss, apply)


def first_task(tasks):
    return jax.tree.map(lambda a: a[0], tasks)


def test_second_order_meta_gradient_matches_finite_differences(model):
    apply, theta = model
    with jax.enable_x64(True):
        theta64 = jax.tree.map(lambda a: a.astype(jnp.float64), theta)
        task = first_task(make_tasks(jax.random.key(1), jnp.float64))
        task_loss = make_maml_task_loss(loss_of(apply), steps=2, step_size=0.3)
        key = jax.random.key(0)
        check_grads(
            jax.jit(lambda th: task_loss({"theta": th}, task, key)[0]),
            (theta64,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_first_order_differs_from_second_order(model):
    apply, theta = model
    task = first_task(make_tasks(jax.random.key(2)))
    grads = {}
    for fo in (False, True):
        tl = make_maml_task_loss(loss_of(apply), steps=1, step_size=0.5, first_order=fo)
        grads[fo] = jax.jit(jax.grad(lambda th: tl({"theta": th}, task, jax.random.key(0))[0]))(
            theta
        )
    diff = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, grads.values()))
    )
    assert diff > 1e-5


def test_vmap_and_map_equal_python_loop(model):
    apply, theta = model
    tasks = make_tasks(jax.random.key(3))
    tl = make_maml_task_loss(loss_of(apply), steps=2, step_size=0.1)
    mp = {"theta": theta}
    key = jax.random.key(4)
    keys = jax.random.split(key, T)
    loop = jnp.stack([tl(mp, jax.tree.map(lambda a: a[i], tasks), keys[i])[0] for i in range(T)])
    for strategy in ("vmap", "map", "map_remat"):
        losses, _ = per_task(tl, mp, tasks, key, strategy=strategy)
        np.testing.assert_allclose(losses, loop, rtol=1e-5, atol=1e-6)


def test_map_remat_has_the_gradients_of_map_with_less_memory(model):
    apply, theta = model
    tasks = make_tasks(jax.random.key(3))
    tl = make_maml_task_loss(loss_of(apply), steps=3, step_size=0.1)
    mp = {"theta": theta}

    def grad_fn(strategy):
        mean = lambda m: jnp.mean(per_task(tl, m, tasks, jax.random.key(4), strategy=strategy)[0])
        return jax.jit(jax.grad(mean))

    grads = {s: grad_fn(s)(mp) for s in ("map", "map_remat")}
    for a, b in zip(*map(jax.tree.leaves, grads.values())):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    temp = {s: grad_fn(s).lower(mp).compile().memory_analysis().temp_size_in_bytes for s in grads}
    assert temp["map_remat"] < temp["map"]


def test_meta_sgd_step_sizes_get_gradients(model):
    apply, theta = model
    task = first_task(make_tasks(jax.random.key(5)))
    mp = init_meta_params(theta, meta_sgd=True, step_size=0.1)
    tl = make_maml_task_loss(loss_of(apply), steps=1)
    g = jax.grad(lambda m: tl(m, task, jax.random.key(0))[0])(mp)
    norms = [float(jnp.linalg.norm(a)) for a in jax.tree.leaves(g["alpha"])]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_adapt_zero_steps_is_identity_and_reduces_support_loss(model):
    apply, theta = model
    task = first_task(make_tasks(jax.random.key(6)))
    loss = loss_of(apply)
    assert adapt(loss, theta, task.support, steps=0) is theta
    adapted = adapt(loss, theta, task.support, steps=5, step_size=0.1, remat=True)
    assert float(loss(adapted, task.support)) < float(loss(theta, task.support))


def test_train_step_traces_once_and_learns(model):
    apply, theta = model
    pool = make_tasks(jax.random.key(7))
    optimizer = optax.adam(1e-2)
    tl = make_maml_task_loss(loss_of(apply), steps=1, step_size=0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state):
        return with_sampler(make_meta_train_step(tl, optimizer), lambda k: pool)(state)

    state = init_train_state(init_meta_params(theta), optimizer, jax.random.key(0))
    losses = []
    for _ in range(30):
        state, metrics = step(state)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 30
    assert losses[-1] < losses[0]


def test_modulation_with_unit_multipliers_is_plain_maml(model):
    apply, theta = model
    tasks = make_tasks(jax.random.key(8))
    ones = jax.tree.map(jnp.ones_like, theta)
    chex.assert_trees_all_equal(modulate(ones, theta), theta)
    plain = make_maml_task_loss(loss_of(apply), steps=1, step_size=0.1)
    modulated = make_maml_task_loss(
        loss_of(apply),
        steps=1,
        step_size=0.1,
        init_fn=lambda mp, t, k: (modulate(ones, mp["theta"]), {}),
    )
    mp, key = {"theta": theta}, jax.random.key(0)
    chex.assert_trees_all_equal(
        per_task(plain, mp, tasks, key)[0], per_task(modulated, mp, tasks, key)[0]
    )


def test_modulator_shapes_and_range(model):
    _, theta = model
    m_params = init_modulator(jax.random.key(0), 5, theta)
    mult = modulator(m_params, jnp.ones(5), theta)
    chex.assert_trees_all_equal_shapes(mult, theta)
    leaves = jax.tree.leaves(mult)
    assert all(float(jnp.min(a)) > 0 and float(jnp.max(a)) < 1 for a in leaves)
    flat = jnp.concatenate([a.ravel() for a in jax.tree.leaves(theta)])
    chex.assert_trees_all_equal(unflatten_like(flat, theta), theta)


def test_adapt_tasks_returns_per_task_params(model):
    apply, theta = model
    tasks = make_tasks(jax.random.key(9))
    adapted = adapt_tasks(loss_of(apply), {"theta": theta}, tasks, steps=2, step_size=0.1)
    for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(theta)):
        assert a.shape == (T, *b.shape)


@pytest.mark.parametrize(
    "steps, first_order, remat", [(0, False, False), (1, False, False), (3, True, True)]
)
def test_reported_support_loss_is_the_direct_one(model, steps, first_order, remat):
    apply, theta = model
    task = first_task(make_tasks(jax.random.key(10)))
    loss = loss_of(apply)
    kw = dict(steps=steps, step_size=0.1, first_order=first_order, remat=remat)
    adapted, support_loss = jax.jit(functools.partial(adapt_with_support_loss, loss, **kw))(
        theta, task.support
    )
    expected = jax.jit(functools.partial(adapt, loss, **kw))(theta, task.support)
    chex.assert_trees_all_close(adapted, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(support_loss, loss(theta, task.support), rtol=1e-6)
    # through the task loss, with a modulated (task-specific) initialization
    half = jax.tree.map(lambda a: jnp.full_like(a, 0.5), theta)
    tl = make_maml_task_loss(loss, **kw, init_fn=lambda mp, t, k: (modulate(half, mp["theta"]), {}))
    _, aux = jax.jit(tl)({"theta": theta}, task, jax.random.key(0))
    direct = loss(modulate(half, theta), task.support)
    np.testing.assert_allclose(aux["support_loss"], direct, rtol=1e-6)
    assert float(aux["support_loss"]) != float(loss(theta, task.support))
