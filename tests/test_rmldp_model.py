"""RMLDP model: modulation reduces to MAML, gradients reach every part, Algorithm 1 learns."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmeta.data.frames import validate_long
from dmeta.data.synthetic import make_demand
from dmeta.data.tasks import build_task_pool, eval_tasks, sample_tasks, split_segments
from dmeta.data.windows import make_windows, n_records, to_panel
from dmeta.meta.batching import per_task
from dmeta.meta.steps import with_sampler
from dmeta.rmldp.model import init_rmldp, make_task_loss, make_train_step, meta_test
from dmeta.train.state import init_train_state
from dmeta.types import Split, TaskBatch

T, N, S, F, H, N_SEG = 3, 5, 4, 2, 4, 6
SIZES = dict(n_features=F, seq_len=S, hidden=H, q_d_dim=3, q_g_dim=2, graph_dim=4)


def random_tasks(key):
    def split(k):
        k1, k2, k3 = jax.random.split(k, 3)
        return Split(
            jax.random.normal(k1, (T, N, S, F)),
            jax.random.normal(k2, (T, N, S, F)),
            jax.random.normal(k3, (T, N)),
            jnp.ones((T, N)).at[:, -1].set(0.0),
        )

    ks, kq = jax.random.split(key)
    return TaskBatch(split(ks), split(kq), jnp.array([0, 2, 5]))


GRAPH = jax.random.normal(jax.random.key(42), (N_SEG, 4))


def test_unit_modulation_reproduces_maml_exactly():
    model, mp = init_rmldp(jax.random.key(0), **SIZES)
    maml, _ = init_rmldp(jax.random.key(0), **SIZES, use_data=False, use_graph=False)
    mp["modulator"] = {
        "w": jnp.zeros_like(mp["modulator"]["w"]),
        "b": jnp.full_like(mp["modulator"]["b"], 100.0),
    }
    tasks, key = random_tasks(jax.random.key(1)), jax.random.key(2)
    kw = dict(lam=0.0, steps=2, step_size=0.1)
    rmldp_loss, aux = jax.jit(functools.partial(per_task, make_task_loss(model, GRAPH, **kw)))(
        mp, tasks, key
    )
    maml_loss, _ = jax.jit(functools.partial(per_task, make_task_loss(maml, GRAPH, **kw)))(
        {"theta": mp["theta"]}, tasks, key
    )
    # M(q) = sigmoid(100) = 1.0 exactly in float32, so theta_0i = theta_0: the same computation
    # up to how XLA fuses two different programs (last-bit differences, hence rtol 1e-6)
    chex.assert_trees_all_close(rmldp_loss, maml_loss, rtol=1e-6, atol=0.0)
    assert float(jnp.min(aux["rec_loss"])) > 0


@pytest.mark.parametrize("bias, start", [(3.0, 0.9526), (0.0, 0.5)])
def test_modulator_bias_sets_the_initial_customization(bias, start):
    model, mp = init_rmldp(jax.random.key(0), **SIZES, modulator_bias=bias)
    task = jax.tree.map(lambda a: a[0], random_tasks(jax.random.key(1)))
    theta_0i, _ = model.init_fn(GRAPH, 0.0)(mp, task, jax.random.key(2))
    for a, b in zip(jax.tree.leaves(theta_0i), jax.tree.leaves(mp["theta"])):
        big = np.abs(np.asarray(b)) > 1e-3
        np.testing.assert_allclose(np.asarray(a)[big] / np.asarray(b)[big], start, atol=0.01)


@pytest.mark.parametrize(
    "switches, parts",
    [
        ({}, {"theta", "encoder", "graph", "modulator"}),
        ({"use_data": False}, {"theta", "graph", "modulator"}),  # RMLDP-d
        ({"use_graph": False}, {"theta", "encoder", "modulator"}),  # RMLDP-g
        ({"use_season": False}, {"theta", "encoder", "graph", "modulator"}),  # RMLDP-szn
        ({"meta_sgd": True, "use_data": False, "use_graph": False}, {"theta", "alpha"}),
    ],
)
def test_gradients_reach_every_part(switches, parts):
    model, mp = init_rmldp(jax.random.key(3), **SIZES, **switches)
    assert set(mp) == parts
    tl = make_task_loss(model, GRAPH, lam=0.5, steps=1, step_size=0.1)
    tasks = random_tasks(jax.random.key(4))
    grads = jax.jit(jax.grad(lambda p: jnp.mean(per_task(tl, p, tasks, jax.random.key(0))[0])))(mp)
    for part in parts:
        norm = float(optax.tree.norm(grads[part]))
        assert np.isfinite(norm) and norm > 0, part
    if not switches.get("use_season", True):
        assert "gru_season" not in mp["theta"]


@pytest.mark.parametrize("decoder", ["mpfn", "linear"])
def test_reconstruction_loss_trains(decoder):
    model, mp = init_rmldp(jax.random.key(5), **SIZES, decoder=decoder)
    assert ("grus" in mp["encoder"]["dec"]) == (decoder == "mpfn")  # eq. 10's MPFN decoder
    tasks = random_tasks(jax.random.key(6))
    support = jax.tree.map(lambda a: a[0], tasks.support)
    opt = optax.adam(3e-2)

    @jax.jit
    def step(enc, opt_state):
        rec, g = jax.value_and_grad(lambda e: model.encode(e, support)[1])(enc)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(enc, updates), opt_state, rec

    enc, opt_state = mp["encoder"], opt.init(mp["encoder"])
    recs = []
    for _ in range(60):
        enc, opt_state, rec = step(enc, opt_state)
        recs.append(float(rec))
    assert recs[-1] < 0.7 * recs[0]


@pytest.fixture(scope="module")
def pool():
    demand = make_demand(n_segments=10, n_clusters=2, n_steps=160, freq="W", seed=0)
    panel = to_panel(validate_long(demand.frame))
    windows = make_windows(panel, seq_len=S, horizon_gap=2, horizon_len=2, season=52)
    return build_task_pool(windows), split_segments(n_records(panel)), panel


def test_algorithm1_step_traces_once_and_loss_decreases(pool):
    task_pool, split, panel = pool
    sizes = dict(SIZES, n_features=panel.values.shape[-1])
    model, mp = init_rmldp(jax.random.key(7), **sizes)
    graph = jax.random.normal(jax.random.key(8), (panel.values.shape[0], 4))
    optimizer = optax.adam(1e-2)
    sample = functools.partial(
        sample_tasks, pool=task_pool, segments=split.train, n_tasks=4, n_support=6, n_query=6
    )
    train_step = make_train_step(model, graph, optimizer, lam=0.5, steps=1, step_size=0.05)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state):
        return with_sampler(train_step, sample)(state)

    state = init_train_state(mp, optimizer, jax.random.key(9))
    losses = []
    for _ in range(40):
        state, metrics = step(state)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8])

    tasks = eval_tasks(task_pool, split.test, max_support=8, max_query=5)
    pred = meta_test(model, state.params, graph, tasks, steps=1, step_size=0.05)
    assert pred.shape == tasks.query.y.shape and bool(jnp.all(jnp.isfinite(pred)))
    # eq. 8 with zero steps predicts with the modulated initialization itself
    pred0 = meta_test(model, state.params, graph, tasks, steps=0)
    assert float(jnp.max(jnp.abs(pred0 - pred))) > 0
