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
    # label 2 has no user: it takes no part in eq. 10 (the common pattern is still removed)
    empty = demand.segment_patterns(
        events, np.array([0, 1, 2]), np.array([0, 1, 3]), k=1, max_length=2
    )
    assert empty.patterns[2] == {} and empty.common == {(5,)}
    assert empty.unique[0] == {(6,): 1, (5, 6): 1}


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


def test_popular_top_up_draws_alternatives_by_their_events():
    """A purchase-only log, one category: item 1 ("hot") bought by 100 users, items 2-31 once
    each. The alternatives of the 30 other purchases hold item 1 about 2 times in 30 when
    drawn uniformly (2 of 30 items) and 19 times in 20 when drawn by events (100 of 129)."""
    items = [1] * 100 + list(range(2, 32))
    ev = pd.DataFrame({
        "user_id": np.arange(130), "item_id": items, "category_id": 0, "behavior": "buy",
        "timestamp": 0,
    })  # fmt: skip
    attrs = pd.DataFrame({"item_id": np.arange(1, 32), "f0": ["hot"] + ["cold"] * 30})
    share = {}
    for top_up in ("uniform", "popular"):
        data = demand.choice_situations(ev, attrs, n_alternatives=3, seed=0, top_up=top_up)
        others = data.x[:, 0, 0] == 0  # the purchase is a cold item
        share[top_up] = data.x[others, 1:, 0].max(axis=1).mean()
    assert share["uniform"] < 0.25 and share["popular"] > 0.75, share
    with pytest.raises(ValueError, match="top_up='market'"):
        demand.choice_situations(ev, attrs, n_alternatives=3, top_up="market")


@pytest.fixture(scope="module")
def smoke_log():
    from dmeta.c2m.config import get_config

    cfg = get_config(smoke=True)
    d = cfg.data
    log = synthetic_c2m(
        n_users=d.synthetic_users, n_segments=d.synthetic_segments,
        own_block=d.synthetic_own_block, seed=0,
    )  # fmt: skip
    return cfg, log


def _mpp_planted_and_random(spec, cfg, segment):
    """MPP of the planted segmentation and of 5 random relabellings of it, through the
    protocol's mining stage."""
    from dmeta.c2m import protocol

    prep = protocol.prepare(spec, cfg)
    miner = protocol.Miner(prep, prep.attributes, cfg, seed=0)
    truth = segment[prep.users]
    rng = np.random.default_rng(0)
    return prep, miner(truth)[2], [miner(rng.permutation(truth))[2] for _ in range(5)]


def test_planted_segment_preference_raises_mpp_above_random_segmentations(smoke_log):
    """MPP depends on the segmentation: on the smoke log (96 users, 3 segments with their own
    attribute preferences) the planted segments score 15% above the best of 5 random ones
    (0.066 vs 0.057, uniform 1/27 = 0.037). The gap is small because each user's ridge logit
    rests on 6 purchases."""
    cfg, log = smoke_log
    _, planted, random = _mpp_planted_and_random("synthetic", cfg, log.segment)
    assert planted > 1.1 * max(random)
    assert min(random) > 1 / 27


def test_jdata_format_attributes_reach_mpp(smoke_log, tmp_path):
    """The same log written as JData actions with a JData_Product table (a1-a3): the
    attributes come from the product file, and the planted segments still beat random ones."""
    cfg, log = smoke_log
    ev = log.log.events
    codes = {"view": 1, "cart": 2, "buy": 4, "fav": 5}
    time = pd.Timestamp("2016-02-01") + pd.to_timedelta(
        ev["timestamp"] - ev["timestamp"].min(), "s"
    )
    pd.DataFrame({
        "user_id": ev["user_id"].astype(float), "sku_id": ev["item_id"],
        "time": time.dt.strftime("%Y-%m-%d %H:%M:%S"), "model_id": "",
        "type": ev["behavior"].astype(str).map(codes), "cate": ev["category_id"], "brand": 1,
    }).to_csv(tmp_path / "JData_Action_201602.csv", index=False)  # fmt: skip
    attrs = log.log.attributes
    product = pd.DataFrame({"sku_id": attrs["item_id"], "cate": 8, "brand": 1})
    for i in range(3):
        product[f"a{i + 1}"] = attrs[f"f{i}"] + 1
    product.to_csv(tmp_path / "JData_Product.csv", index=False)
    prep, planted, random = _mpp_planted_and_random(f"jdata:{tmp_path}", cfg, log.segment)
    assert prep.attributes.columns.tolist() == ["item_id", "a1", "a2", "a3"]
    assert planted > 1.1 * max(random)


def test_further_alternatives_add_their_own_mpp(smoke_log):
    """``mining.alternatives=uniform,popular``: MPP and attribute_sets stay the uniform
    draw's, MPP_popular and attribute_sets_popular come beside them."""
    from dmeta.c2m import protocol
    from dmeta.config import override

    cfg, log = smoke_log
    prep = protocol.prepare("synthetic", cfg)
    truth = log.segment[prep.users]
    got = {}
    for modes in ("uniform", "uniform,popular"):
        c = override(cfg, [f"mining.alternatives={modes}"])
        miner = protocol.Miner(prep, prep.attributes, c, 0)
        got[modes] = protocol.mining_metrics(prep, truth, miner)
    both = got["uniform,popular"]
    assert {k: both[k] for k in got["uniform"]} == got["uniform"]
    assert set(both) - set(got["uniform"]) == {"MPP_popular", "attribute_sets_popular"}
    assert both["MPP_popular"] != both["MPP"] and both["attribute_sets_popular"] >= 1
    # the popular draw's MPP depends on the segmentation too (planted 0.065 against at most
    # 0.057 for random relabellings of it)
    rng = np.random.default_rng(0)
    shuffled = [miner(rng.permutation(truth), mode="popular")[2] for _ in range(3)]
    assert both["MPP_popular"] > 1.1 * max(shuffled)
