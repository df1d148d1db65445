"""Out-of-core preprocessing (Polars) equals the pandas path; Grain reads its shards resumably."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import polars as pl
import pytest

from dmeta import outofcore
from dmeta.c2m.synthetic import synthetic_c2m


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """A synthetic C2M log in two CSV files, with bad rows, duplicates and time ties."""
    events = synthetic_c2m(n_users=60, n_segments=3, mean_events=12, n_purchases=3, seed=0)
    events = events.log.events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    events["timestamp"] = events["timestamp"] // 3600 * 3600  # many ties within a user
    events = events.astype(str)
    events.loc[3, "user_id"] = "  "  # blank id
    events.loc[5, "behavior"] = "teleport"
    events.loc[7, "timestamp"] = ""
    half = len(events) // 2
    folder = tmp_path_factory.mktemp("log")
    events.iloc[:half].to_csv(folder / "events_a.csv", index=False)
    second = pd.concat([events.iloc[half:], events.iloc[10:14]])  # exact duplicates
    second.to_csv(folder / "events_b.csv", index=False)
    return folder


@pytest.mark.parametrize("n_buckets", [1, 4])
def test_sequences_and_panels_equal_the_pandas_path(log_dir, tmp_path, n_buckets):
    want = outofcore.preprocess(log_dir, tmp_path / "pd", engine="pandas", max_len=8, max_items=20)
    got = outofcore.preprocess(
        log_dir, tmp_path / "pl", engine="polars", max_len=8, max_items=20,
        n_buckets=n_buckets, n_panel_shards=3,
    )  # fmt: skip
    assert got.engine == "polars" and want.engine == "pandas"
    assert (got.n_events, got.n_users) == (want.n_events, want.n_users)
    np.testing.assert_array_equal(got.items.ids, want.items.ids)
    np.testing.assert_array_equal(got.categories.ids, want.categories.ids)
    a = outofcore.read_sequences(tmp_path / "pd" / "sequences", 8)
    b = outofcore.read_sequences(tmp_path / "pl" / "sequences", 8)
    for name in ("users", "behavior", "item", "category", "mask"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    # ... and both equal build_sequences on the loader's in-memory log
    events = outofcore.load_pandas(log_dir)
    _, _, ref = outofcore.pandas_sequences(events, max_len=8, max_items=20)
    np.testing.assert_array_equal(b.item, ref.item)
    np.testing.assert_array_equal(b.mask, ref.mask)
    assert len(got.panels) == 3
    pd.testing.assert_frame_equal(
        outofcore.read_panel(got.panels), outofcore.read_panel(want.panels), check_dtype=False
    )
    panel = outofcore.read_panel(got.panels)
    assert (panel.groupby("unique_id")["ds"].diff().dropna() == pd.Timedelta(days=1)).all()


def test_ids_are_text_in_both_engines(tmp_path):
    """Ids are stripped text end to end: 007 and 7 are two users, items and segments, and
    a-1 and 1.5 are kept, the same by both engines."""
    rows = [
        ("007", "007", "7", "view", 100),
        ("007", "7", "7", "buy", 200),
        (" 7", "a-1", "007", "buy", 100),
        ("7", "1.5", "1.5", "buy", 86_500),
        ("7", "007", "007", "buy", 90_000),
        ("a-1", "7", "a-1", "buy", 86_500),
        ("1.5", "007 ", "7", "buy", 90_000),
        ("1.5", "7", "7", "buy", 190_000),
    ]
    columns = ["user_id", "item_id", "category_id", "behavior", "timestamp"]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "events.csv", index=False)
    out = {
        engine: outofcore.preprocess(
            tmp_path / "events.csv", tmp_path / engine, engine=engine, max_len=3, n_buckets=2
        )
        for engine in ("pandas", "polars")
    }
    want, got = out["pandas"], out["polars"]
    assert (got.n_events, got.n_users) == (want.n_events, want.n_users) == (8, 4)
    np.testing.assert_array_equal(got.items.ids, want.items.ids)
    assert sorted(got.items.ids) == ["007", "1.5", "7", "a-1"]
    np.testing.assert_array_equal(got.categories.ids, want.categories.ids)
    a = outofcore.read_sequences(want.sequences, 3)
    b = outofcore.read_sequences(got.sequences, 3)
    assert a.users.tolist() == b.users.tolist() == ["007", "1.5", "7", "a-1"]
    for name in ("behavior", "item", "category", "mask"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    panel = outofcore.read_panel(got.panels)
    pd.testing.assert_frame_equal(panel, outofcore.read_panel(want.panels), check_dtype=False)
    assert sorted(panel["unique_id"].unique()) == ["007", "1.5", "7", "a-1"]


def test_validation_names_file_column_and_line(log_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="dmeta.outofcore"):
        buckets = outofcore.partition_events(log_dir, log_dir.parent / "buckets_v", n_buckets=2)
    text = caplog.text
    # rows 3, 5, 7 of the shuffled frame are lines 5, 7, 9 of events_a.csv (header = line 1)
    assert "events_a.csv" in text
    assert "column 'user_id' (lines [5]" in text
    assert "column 'behavior' (lines [7]" in text
    assert "column 'timestamp' (lines [9]" in text
    assert (
        buckets.n_events
        == sum(len(pd.read_csv(f, dtype=str)) for f in sorted(log_dir.glob("events*.csv"))) - 3
    )


def test_a_file_without_valid_rows_raises(tmp_path):
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,category_id,behavior,timestamp\n ,1,2,view,3\n"
    )
    with pytest.raises(ValueError, match=r"events.csv: no valid events"):
        outofcore.partition_events(tmp_path / "events.csv", tmp_path / "b")


def test_parquet_input_and_engine_choice(log_dir, tmp_path):
    frames = [pd.read_csv(f, dtype=str) for f in sorted(log_dir.glob("events*.csv"))]
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    for i, frame in enumerate(frames):
        frame.to_parquet(pq_dir / f"events_{i}.parquet")
    got = outofcore.preprocess(pq_dir, tmp_path / "out", engine="polars", max_len=8, n_buckets=2)
    want = outofcore.preprocess(log_dir, tmp_path / "ref", engine="polars", max_len=8, n_buckets=2)
    assert got.n_events == want.n_events
    a, b = (outofcore.read_sequences(p.sequences, 8) for p in (got, want))
    np.testing.assert_array_equal(a.item, b.item)
    # numbers in Parquet (ids and time) read as their text and as seconds
    ids = {c: np.int64 for c in ("user_id", "item_id", "category_id")}
    outofcore.load_pandas(log_dir).astype(ids).to_parquet(tmp_path / "numbers.parquet")
    numbers = outofcore.preprocess(
        tmp_path / "numbers.parquet", tmp_path / "num", engine="polars", max_len=8, n_buckets=2
    )
    c = outofcore.read_sequences(numbers.sequences, 8)
    assert numbers.n_events == want.n_events and c.users.tolist() == b.users.tolist()
    np.testing.assert_array_equal(c.item, b.item)
    assert outofcore.choose_engine(log_dir) == "pandas"  # small
    assert outofcore.choose_engine(log_dir, "polars") == "polars"
    with pytest.raises(ValueError, match="engine"):
        outofcore.choose_engine(log_dir, "spark")
    assert pl.read_parquet(got.sequences[0]).columns == [
        "user_id", "behavior", "item", "category", "length"
    ]  # fmt: skip


def test_grain_reader_resumes_to_the_same_batches(log_dir, tmp_path):
    import json

    out = outofcore.preprocess(log_dir, tmp_path / "o", engine="polars", max_len=8, n_buckets=4)
    full = outofcore.read_sequences(out.sequences, 8)

    def reader(p):
        ds = outofcore.sequence_dataset(
            out.sequences, max_len=8, batch_size=5, seed=7, process_index=p, process_count=2
        )
        return iter(ds.to_iter_dataset())

    it = reader(0)
    for _ in range(3):  # stop after k = 3 batches
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    want = [next(it) for _ in range(12)]  # crosses an epoch boundary
    resumed = reader(0)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(12)]
    for a, b in zip(got, want, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # the rows are the user's padded sequences, and the two processes read disjoint users
    row = {u: i for i, u in enumerate(full.users)}
    batch = want[0]
    i = row[str(batch["user_id"][0])]
    np.testing.assert_array_equal(batch["features"][0], full.features()[i])
    np.testing.assert_array_equal(batch["mask"][0], full.mask[i])
    users = [
        {str(u) for b in (next(r) for _ in range(20)) for u in b["user_id"]}
        for r in (reader(0), reader(1))
    ]
    assert not users[0] & users[1]
    assert users[0] | users[1] == set(full.users.tolist())
