"""PrefixSpan equals the ``prefixspan`` PyPI package on random databases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmeta.mining.prefixspan import prefixspan

PrefixSpan = pytest.importorskip("prefixspan").PrefixSpan


def reference(db, min_support, max_length):
    miner = PrefixSpan(db)
    if max_length is not None:
        miner.maxlen = max_length
    return {tuple(p): s for s, p in miner.frequent(min_support)} if db else {}


@settings(max_examples=150, deadline=None)
@given(
    db=st.lists(st.lists(st.integers(-3, 6), max_size=12), max_size=25),
    min_support=st.integers(1, 4),
    max_length=st.sampled_from([None, 1, 2, 3, 4]),
)
def test_matches_package(db, min_support, max_length):
    assert prefixspan(db, min_support=min_support, max_length=max_length) == reference(
        db, min_support, max_length
    )


def test_matches_package_skewed_arrays():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.zipf(1.5, int(offsets[-1])) % 40 * 1000  # sparse, large item ids
    db = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(lengths))]
    got = prefixspan((values, offsets), min_support=15, max_length=3)
    assert got == reference(db, 15, 3)
    assert max(map(len, got)) == 3


def test_known_supports():
    db = [[1, 2, 3], [1, 3, 2], [2, 1], [3]]
    got = prefixspan(db, min_support=2)
    assert got == {(1,): 3, (2,): 3, (3,): 3, (1, 2): 2, (1, 3): 2}


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_support"):
        prefixspan([[1]], min_support=0)
    with pytest.raises(ValueError, match="max_length"):
        prefixspan([[1]], min_support=1, max_length=0)
