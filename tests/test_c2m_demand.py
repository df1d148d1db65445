"""Integrated demand mining recovers planted patterns and attribute preferences."""

import numpy as np
import pandas as pd
import pytest

from dmeta.c2m import demand
from dmeta.c2m.synthetic import synthetic_c2m


@pytest.fixture(scope="module")
def planted():
    return synthetic_c2m(n_users=240, n_segments=3, n_purchases=8, seed=1)


def test_planted_patterns_found_and_common_pattern_excluded(planted):
    users = np.arange(len(planted.segment))
    found = demand.segment_patterns(planted.log.events, users, planted.segment, k=2, max_length=3)
    assert planted.common_pattern in found.common
    for s, patterns in enumerate(planted.patterns):
        for p in patterns:
            assert p in found.unique[s]
            assert p in found.patterns[s] and p not in found.common


def test_common_patterns_eq10_11():
    events = pd.DataFrame(
        {
            "user_id": [0, 0, 1, 1, 2, 2],
            "item_id": 0,
            "category_id": [5, 6, 5, 7, 5, 6],
            "behavior": ["view", "cart", "view", "view", "view", "buy"],
            "timestamp": [0, 1, 0, 1, 0, 1],
        }
    )
    found = demand.segment_patterns(
        events, np.array([0, 1, 2]), np.array([0, 1, 1]), k=1, max_length=2
    )
    assert found.patterns[0] == {(5,): 1, (6,): 1, (5, 6): 1}
    assert found.patterns[1] == {(5,): 2}  # the buy event is not a source behaviour
    assert found.common == {(5,)} and found.unique[1] == {}


def test_attribute_sets_coefficients_and_mpp(planted):
    data = demand.choice_situations(planted.log.events, planted.log.attributes, n_alternatives=4)
    assert data.x.shape[1:] == (4, 6) and data.mask.all()
    seg_of = planted.segment[data.user]
    sets = demand.segment_attribute_sets(data, seg_of, 3, top=3, l2=0.0)
    assert np.abs(sets.beta - planted.beta).max() < 0.6  # ~640 choices per segment
    for s in range(3):
        utility = [np.concatenate([[0.0], planted.beta[s, 2 * f : 2 * f + 2]]) for f in range(3)]
        assert sets.best[s] == tuple(int(np.argmax(u)) for u in utility)
    users, beta_u = demand.user_logits(data, l2=1.0)
    own = demand.mean_purchase_probability(
        data, beta_u, [sets.best[planted.segment[u]] for u in users]
    )
    other = demand.mean_purchase_probability(
        data, beta_u, [sets.best[(planted.segment[u] + 1) % 3] for u in users]
    )
    assert own > other > 0


def test_derived_attributes_are_discrete():
    emb = np.random.default_rng(0).normal(size=(50, 8))
    attrs = demand.derived_attributes(np.arange(50) + 7, emb, n_fields=3, n_values=3, seed=0)
    assert attrs.columns.tolist() == ["item_id", "d0", "d1", "d2"]
    assert set(np.unique(attrs[["d0", "d1", "d2"]].to_numpy())) <= {0, 1, 2}
