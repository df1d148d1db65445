"""Segment knowledge graph: co-occurrence weights, edge lists, DeepWalk walks and embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from dmeta.data.frames import DataError
from dmeta.graph.cooccurrence import cooccurrence_graph, edge_graph, read_graph
from dmeta.graph.deepwalk import deepwalk, random_walks, sample_cdf, skipgram_pairs

IDS = np.array(["a", "b", "c", "d"])


def test_cooccurrence_counts_baskets_once_and_thresholds():
    baskets = pd.DataFrame(
        {
            "basket_id": [1, 1, 1, 2, 2, 3, 3, 3],
            "unique_id": ["a", "b", "b", "a", "b", "a", "c", "d"],
        }
    )
    w = cooccurrence_graph(baskets, IDS, threshold=1)
    assert w[0, 1] == 2 and w[1, 0] == 2  # baskets 1 and 2; the repeated b counts once
    assert w[0, 2] == 1 and w[2, 3] == 1 and w[1, 2] == 0
    assert np.all(np.diag(w) == 0)
    w2 = cooccurrence_graph(baskets, IDS, threshold=2)
    assert w2[0, 1] == 2 and w2[0, 2] == 0 and w2.sum() == 4


def test_unknown_segment_and_bad_weight_name_column_and_line(tmp_path):
    baskets = pd.DataFrame({"basket_id": [1, 1], "unique_id": ["a", "zz"]})
    with pytest.raises(DataError, match=r"'unique_id'.*line 3 \('zz'\)"):
        cooccurrence_graph(baskets, IDS)
    path = tmp_path / "edges.csv"
    pd.DataFrame({"src": ["a", "b"], "dst": ["b", "c"], "weight": [1.0, -2.0]}).to_csv(
        path, index=False
    )
    with pytest.raises(DataError, match=r"edges.csv.*'weight'.*line 3"):
        read_graph(path, IDS, kind="edges", threshold=0)
    with pytest.raises(DataError, match="missing column"):
        edge_graph(pd.DataFrame({"src": ["a"]}), IDS)


def test_edge_list_is_symmetric_and_adds_repeats():
    edges = pd.DataFrame({"src": ["a", "b", "c"], "dst": ["b", "a", "d"], "weight": [1, 2, 0.5]})
    w = edge_graph(edges, IDS, threshold=1.0)
    np.testing.assert_array_equal(w, w.T)
    assert w[0, 1] == 3 and w[2, 3] == 0


def test_walk_transitions_are_proportional_to_weights():
    w = jnp.array([[0, 1, 3, 0], [1, 0, 0, 1], [3, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
    walks = np.asarray(random_walks(jax.random.key(0), w, walks_per_node=500, walk_length=8))
    assert walks.shape == (2000, 8)
    counts = np.zeros((4, 4))
    np.add.at(counts, (walks[:, :-1].ravel(), walks[:, 1:].ravel()), 1)
    freq = counts / counts.sum(1, keepdims=True)
    expected = np.array(w) / np.maximum(np.array(w).sum(1, keepdims=True), 1)
    expected[3, 3] = 1.0  # isolated node stays in place
    np.testing.assert_allclose(freq, expected, atol=0.03)
    assert counts[1, 2] == 0 and counts[0, 3] == 0  # no step along a missing link


def test_skipgram_pairs_window():
    c, o = skipgram_pairs(jnp.array([[0, 1, 2]]), window=1)
    assert sorted(zip(c.tolist(), o.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]


def test_deepwalk_separates_two_planted_communities():
    n = 10
    rng = np.random.default_rng(0)
    w = np.zeros((2 * n, 2 * n), np.float32)
    for block in (slice(0, n), slice(n, 2 * n)):
        w[block, block] = rng.uniform(1, 3, (n, n))
    w[0, n] = w[n, 0] = 0.5  # one weak bridge
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0)
    emb = np.asarray(deepwalk(jax.random.key(1), jnp.asarray(w), dim=8, steps=400))
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    label = np.repeat([0, 1], n)
    same = label[:, None] == label[None, :]
    off = ~np.eye(2 * n, dtype=bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.5
    np.fill_diagonal(cos, -np.inf)
    assert np.all(label[np.argmax(cos, axis=1)] == label)  # nearest neighbour in-community


def test_sample_cdf_matches_probabilities_and_skips_zero_mass():
    probs = jnp.array([0.1, 0.0, 0.6, 0.3])
    draws = np.asarray(sample_cdf(jax.random.key(0), jnp.cumsum(probs), (100_000,)))
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, probs, atol=0.01)
    assert freq[1] == 0
    rows = jnp.cumsum(jnp.array([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0]]), axis=1)  # unnormalized
    per_row = np.stack([np.asarray(sample_cdf(jax.random.key(i), rows)) for i in range(400)])
    assert set(per_row[:, 0]) == {1}
    assert set(per_row[:, 1]) == {0, 2}


def test_user_edge_list_keeps_unweighted_edges_and_drops_unknown_segments(caplog):
    from dmeta.config import ConfigError, override
    from dmeta.rmldp.config import get_config
    from dmeta.rmldp.protocol import DemandData, graph_weights, runnable

    ids = np.array(["a", "b", "c", "d"])
    edges = pd.DataFrame({"src": ["a", "b", "x"], "dst": ["b", "c", "a"]})  # no weight column
    data = DemandData("toy", frame=None, groups=pd.Series(dtype=str), edges=edges)
    cfg = get_config(smoke=True)
    with caplog.at_level("WARNING"):
        w = graph_weights(data, ids, cfg)
    assert (w > 0).sum() // 2 == 2  # weight 1 each, not cut by the basket count threshold
    assert "dropped 1 edges of unknown segments" in caplog.text

    prep = type("Prep", (), {"weights": w, "data": data})()
    assert runnable(("MAML", "RMLDP"), prep) == ("MAML", "RMLDP")
    strict = override(cfg, ["graph.edge_threshold=5"])
    prep.weights = graph_weights(data, ids, strict)
    with pytest.raises(ConfigError, match=r"\['RMLDP'\] need a knowledge graph"):
        runnable(("MAML", "RMLDP"), prep)
    assert runnable(("MAML",), prep) == ("MAML",)
