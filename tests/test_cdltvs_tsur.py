"""TSUR baseline (dmeta.ltv.tsur): wavelets, customer graph, learning, protocol cell.

The learning test and the smoke run use the same data sizes and hidden size, so they share
one compilation of the training step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dmeta import metrics
from dmeta.config import override
from dmeta.ltv import tsur as T
from dmeta.ltv.data import make_synthetic, split_customers
from experiments import cdltvs


def test_haar_dwt_gives_the_textbook_coefficients():
    haar = T.orthonormal_lowpass(jnp.array([np.pi / 4]))
    np.testing.assert_allclose(haar, [2**-0.5, 2**-0.5], rtol=1e-6)
    x = np.array([4.0, 2.0, 5.0, 5.0, 1.0, 3.0, 0.0, 8.0])
    d1, d2, d3, a3 = (np.asarray(c) for c in T.dwt(jnp.asarray(x), haar, 3))
    a1 = (x[0::2] + x[1::2]) / np.sqrt(2)
    a2 = (a1[0::2] + a1[1::2]) / np.sqrt(2)
    np.testing.assert_allclose(d1, (x[0::2] - x[1::2]) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(d2, (a1[0::2] - a1[1::2]) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(d3, (a2[0] - a2[1]) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(a3, x.sum() / np.sqrt(8), atol=1e-5)


def test_random_wavelets_are_orthonormal_and_reconstruct_perfectly():
    lo = T.random_lowpass(jax.random.key(3), 4, 10)  # the reference's length-10 filters
    np.testing.assert_allclose(lo.sum(-1), np.sqrt(2), atol=1e-5)  # low-pass: sum sqrt(2)
    np.testing.assert_allclose(T.highpass(lo).sum(-1), 0.0, atol=1e-5)  # high-pass: sum 0
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    for c in range(4):
        for n in (16, 8, 4, 2):  # the periodized operator is orthogonal at every level
            op = np.concatenate(
                [T.analysis_matrix(lo[c], n), T.analysis_matrix(T.highpass(lo[c]), n)]
            )
            np.testing.assert_allclose(op @ op.T, np.eye(n), atol=1e-5)
        coeffs = T.dwt(jnp.asarray(x), lo[c], 3)  # [d1, d2, d3, a3]
        rec = coeffs[-1]
        for level in (2, 1, 0):  # inverse = transposes, coarsest level first
            n = 2 * rec.shape[-1]
            rec = rec @ T.analysis_matrix(lo[c], n) + coeffs[level] @ T.analysis_matrix(
                T.highpass(lo[c]), n
            )
        np.testing.assert_allclose(rec, x, atol=1e-4)


def test_wavelet_module_starts_as_the_sigmoid_of_the_dwt():
    wave = T.MultiChannelWavelet(8, channels=3, levels=3, filter_len=10, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).gamma(1.0, 1.0, (5, 8)), jnp.float32)
    out = wave(x)
    assert [o.shape for o in out] == [(5, 4, 3), (5, 2, 3), (5, 1, 3), (5, 1, 3)]
    lo = wave.filters[...]
    for c in range(3):  # level l's high band reads the previous (sigmoided) low band
        low = x
        for level in range(3):
            hi_ref, low_lin = T.dwt(low, lo[c], 1)
            np.testing.assert_allclose(out[level][..., c], jax.nn.sigmoid(hi_ref), atol=1e-5)
            low = jax.nn.sigmoid(low_lin)
        np.testing.assert_allclose(out[3][..., c], low, atol=1e-5)
    assert float(wave.penalty()) < 1e-4  # at its wavelet initialization


def test_gat_attends_in_input_space_as_on_projected_nodes():
    layer = T.GATLayer(6, 5, 3, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    dst = jnp.asarray(rng.normal(size=(4, 2, 6)), jnp.float32)
    src = jnp.asarray(rng.normal(size=(4, 2, 7, 6)), jnp.float32)
    direct = layer(layer.project(dst), layer.project(src))
    assert direct.shape == (4, 2, 3, 5)
    np.testing.assert_allclose(layer.attend_inputs(dst, src), direct, rtol=1e-5, atol=1e-6)


def test_nearest_are_the_closest_rows_of_other_customers():
    rng = np.random.default_rng(0)
    table, query = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    t_cust, q_cust = np.repeat(np.arange(20), 3), rng.integers(0, 30, 25)  # some shared
    got = T.nearest(query, q_cust, table, t_cust, 4, chunk=7)
    dist = np.linalg.norm(query[:, None] - table[None], axis=-1)
    for i in range(len(query)):
        allowed = np.flatnonzero(t_cust != q_cust[i])
        assert not np.isin(got[i], np.flatnonzero(t_cust == q_cust[i])).any()
        np.testing.assert_allclose(dist[i, got[i]], np.sort(dist[i, allowed])[:4], rtol=1e-9)
    with pytest.raises(ValueError, match="fewer than"):
        T.nearest(query, q_cust, table[:3], t_cust[:3], 4)


@pytest.fixture(scope="module")
def splits():
    """The smoke run's P = 0 split (same sizes: shared compilation)."""
    return split_customers(make_synthetic(240, n_periods=6, horizon=2, seed=0), seed=0)


def test_graph_neighbours_skip_own_customer_and_never_read_labels(splits):
    train, val, _ = splits
    graph = T.CustomerGraph.build(train, 10)
    x = T.node_features(train)
    for data in (train, val):
        g = graph.arrays(data)
        assert g["g_nbr"].shape == (data.n, 10) and g["g_nbr2"].shape == (data.n, 10, 10)
        own = graph.customer[g["g_nbr"]] == data.customer[:, None]
        own2 = graph.customer[g["g_nbr2"]] == data.customer[:, None, None]
        assert not own.any() and not own2.any()  # no self loop, no own customer
        # hop 1: the nearest training nodes by Euclidean distance of the node features
        d = np.linalg.norm(T.node_features(data)[:, None] - x[None], axis=-1)
        d[data.customer[:, None] == graph.customer[None]] = np.inf
        np.testing.assert_allclose(
            np.take_along_axis(d, g["g_nbr"], 1), np.sort(d, 1)[:, :10], rtol=1e-5, atol=1e-5
        )
        # hop 2: each neighbour's own nearest nodes, in order, the sample's customer left out
        for i in range(0, data.n, 17):
            for a, j in enumerate(g["g_nbr"][i]):
                lst = graph.neighbours[j][graph.customer[graph.neighbours[j]] != data.customer[i]]
                np.testing.assert_array_equal(g["g_nbr2"][i, a], lst[:10])
    noisy = dataclasses.replace(val, t_y=val.t_y[::-1].copy(), s_y=val.s_y * 7)
    for key, value in graph.arrays(val).items():
        np.testing.assert_array_equal(graph.arrays(noisy)[key], value)
    relabelled = T.CustomerGraph.build(dataclasses.replace(train, t_y=train.t_y * 0 + 1), 10)
    np.testing.assert_array_equal(relabelled.neighbours, graph.neighbours)


def test_tsur_learns_the_target(splits):
    train, val, test = splits
    predict = T.tsur(train, val, seed=0, hidden=8, max_epochs=10, drop_epoch=0, patience=10,
                     batch_size=64, lr=1e-2)  # fmt: skip
    pred = predict(test)
    assert pred.shape == (test.n,) and np.isfinite(pred).all() and (pred >= 0).all()
    constant = metrics.nmae(test.t_y, np.full(test.n, train.t_y.mean()))
    assert metrics.nmae(test.t_y, pred) < 0.8 * constant  # fails if not learnt


def test_smoke_run_writes_tsur_rows(tmp_path):
    cfg = override(cdltvs.get_config(smoke=True), ["protocol.ablations=false"])
    df = cdltvs.run(cfg, data="synthetic", out=tmp_path, seeds=1, methods=("TSUR",),
                    fresh=False, command="dmeta run cdltvs --smoke --methods TSUR")  # fmt: skip
    nmae = df[(df["metric"] == "nmae") & (df["method"] == "TSUR")]
    assert {"P=0%/all", "P=50%/all", "P=50%/C_na", "P=50%/C_a"} <= set(nmae["group"])
    assert np.isfinite(nmae["value"]).all()
    assert set(df[df["metric"] == "hp:hidden"]["value"]) == {cfg.model.hidden}
