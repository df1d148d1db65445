"""C2M loaders (shared samples and malformed lines), vocabularies and behaviour sequences."""

import logging

import numpy as np
import pandas as pd
import pytest

from dmeta.c2m.data import SIZE_TIERS, completejourney_log, event_log, package_size_tiers
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, OOV, build_sequences, build_vocabulary
from dmeta.data.spec import data_root
from dmeta.datasets import LOADERS


def _loader(name):
    return lambda path: event_log(LOADERS[name](path))


load_events, load_jdata, load_rees46, load_userbehavior = (
    _loader(n) for n in ("events", "jdata", "rees46", "userbehavior")
)

SAMPLE = data_root() / "userbehavior" / "UserBehavior_usersample_815users.csv"


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"shared UserBehavior sample missing: {SAMPLE}")
def test_userbehavior_sample():
    events = load_userbehavior(SAMPLE).events
    assert len(events) == 84_475 and events["user_id"].nunique() == 815
    assert events["behavior"].value_counts().to_dict() == {
        "view": 75_872,
        "cart": 4_497,
        "fav": 2_356,
        "buy": 1_750,
    }
    assert (events.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()


def test_userbehavior_malformed_lines_are_dropped_and_logged(tmp_path, caplog):
    path = tmp_path / "ub.csv"
    path.write_text(
        "1,10,100,pv,1511544070\n"
        "1,11,100,jump,1511544071\n"  # unknown behaviour
        "2,12,101,buy,\n"  # truncated: no timestamp
        "2,1x,101,cart,1511544072\n"  # a text item id: kept (ids are text)
        "2,13,102,fav,1511544073\n"
    )
    with caplog.at_level(logging.WARNING):
        events = load_userbehavior(path).events
    assert events["item_id"].tolist() == ["10", "1x", "13"]
    text = caplog.text
    assert "'type'" in text and "(line 2)" in text
    assert "'timestamp'" in text and "(line 3)" in text and str(path) in text


def test_userbehavior_wrong_field_count_names_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,10,100,pv,1511544070\n1,10,100,pv,1511544070,7,8\n")
    with pytest.raises(ValueError, match="bad.csv"):
        load_userbehavior(path)


def test_jdata_rees46_events_formats(tmp_path):
    (tmp_path / "JData_Action_201602.csv").write_text(
        "user_id,sku_id,time,model_id,type,cate,brand\n"
        "7.0,5,2016-02-01 10:00:00,,1,8,3\n7.0,5,2016-02-01 10:05:00,,4,8,3\n7.0,6,bad,,1,8,3\n"
    )
    (tmp_path / "JData_Product.csv").write_text("sku_id,a1,a2,a3,cate,brand\n5,1,2,-1,8,3\n")
    log = load_jdata(tmp_path)
    assert log.events["behavior"].astype(str).tolist() == ["view", "buy"]
    assert log.attributes.columns.tolist() == ["item_id", "a1", "a2", "a3"]

    rees = tmp_path / "rees"
    rees.mkdir()
    (rees / "2019-Oct.csv").write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44,2053,a.b,acme,9.5,9,s\n"
        "2019-10-01 00:01:00 UTC,purchase,44,2053,a.b,acme,9.5,9,s\n"
    )
    log = load_rees46(rees)
    assert log.events["behavior"].astype(str).tolist() == ["view", "buy"]
    assert set(log.attributes.columns) == {"item_id", "brand", "price_decile"}

    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "events.csv").write_text(
        "user_id,item_id,category_id,behavior,timestamp\n1,2,3,cart,5\n1,2,3,view,4\n"
    )
    assert load_events(gen).events["behavior"].astype(str).tolist() == ["view", "cart"]


def test_vocabulary_and_sequences_keep_last_events():
    events = pd.DataFrame(
        {
            "user_id": [2, 1, 1, 1, 1],
            "item_id": [9, 5, 6, 5, 7],
            "category_id": [1, 1, 2, 1, 3],
            "behavior": ["buy", "view", "view", "cart", "view"],
            "timestamp": [0, 4, 1, 2, 3],
        }
    )
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=2)  # 5 (x2) then 6 (tie by id)
    assert items.ids.tolist() == [5, 6] and items.size == 4
    cats = build_vocabulary(events["category_id"].to_numpy())
    seqs = build_sequences(events, max_len=3, items=items, categories=cats)
    assert seqs.users.tolist() == [1, 2]
    # user 1 chronological: 6@1, 5@2 (cart), 7@3, 5@4 -> last three: 5 cart, 7, 5
    assert seqs.item[0].tolist() == [2, OOV, 2]
    assert (
        seqs.behavior[0].tolist()
        == BEHAVIOR_VOCAB.encode(np.array(["cart", "view", "view"])).tolist()
    )
    assert seqs.mask.tolist() == [[True, True, True], [True, False, False]]
    assert seqs.item[1].tolist() == [OOV, 0, 0]


def test_package_size_tiers_by_hand():
    products = pd.DataFrame({
        "product_category": ["MILK"] * 4 + ["SOUP"] * 2,
        "package_size": ["1 GAL", "64 OZ", "32 OZ", "16 OZ", None, "10-6.75 OZ"],
    })  # fmt: skip
    # MILK OZ: 16, 32, 64 rank 1/3, 2/3, 1; the one GAL alone; SOUP: one size, one missing.
    assert package_size_tiers(products).tolist() == [
        "large", "large", "medium", "small", "unknown", "large",
    ]  # fmt: skip


CJ = data_root() / "cj8451_completejourney"


@pytest.mark.skipif(not CJ.exists(), reason=f"shared Complete Journey data missing: {CJ}")
def test_completejourney_households_as_event_log():
    log = completejourney_log(LOADERS["completejourney"](CJ))
    events = log.events
    assert events["user_id"].nunique() == 2469 and set(events["behavior"]) == {"buy"}
    assert len(events) == 1_469_307 - 7_045  # lines of unknown products dropped
    assert (events.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert log.attributes.columns.tolist() == ["item_id", "brand", "size"]
    assert set(log.attributes["brand"]) == {"National", "Private"}
    assert set(log.attributes["size"]) == set(SIZE_TIERS)
