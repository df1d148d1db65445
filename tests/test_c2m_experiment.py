"""The C2M experiment end to end at smoke size: resume, report, tuning."""

import numpy as np
import pandas as pd
import pytest

from dmeta.config import override
from dmeta.report import render


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from experiments import c2m

    cfg = override(c2m.get_config(smoke=True), ["protocol.extras=false"])
    out = tmp_path_factory.mktemp("c2m")
    kw = dict(data="synthetic", seeds=1, methods=c2m.METHODS, command="test")
    full = c2m.run(cfg, out=out, fresh=True, **kw)
    return c2m, cfg, out, kw, full


def test_resume_after_losing_a_cell_is_identical(smoke_run, monkeypatch):
    c2m, cfg, out, kw, full = smoke_run
    assert set(full["method"]) == {*c2m.METHODS, "Random"}
    random = full[full["method"] == "Random"]
    assert set(random["metric"]) >= {"MPP", "attribute_sets"} and "SC" not in set(random["metric"])
    metrics = {"SC", "CH", "SC_inliers", "CH_inliers", "MPP", "ARI", "hp:alpha", "hp:outlier_z",
               "segments", "largest_share", "SC_shared"}  # fmt: skip
    assert metrics <= set(full["metric"])
    # Every method's SC_inliers leaves out the share of users that Ours removes as outliers.
    shares = full[full["metric"] == "outlier_share"]["value"]
    assert len(shares) == len(c2m.METHODS) and shares.nunique() == 1 and shares.iloc[0] > 0
    (out / "cells" / "table1__DEC__seed0.csv").unlink()
    # DEC's inlier share is read from Ours' finished cell: a resumed run fits Ours no more.
    from dmeta.c2m import train

    def no_ours(*a, **k):
        raise AssertionError("Ours refitted on resume")

    monkeypatch.setattr(train, "joint_segmentation", no_ours)
    resumed = c2m.run(cfg, out=out, fresh=False, **kw)
    pd.testing.assert_frame_equal(resumed, full)


def test_cluster_metrics_count_occupied_segments_and_the_largest_share():
    from dmeta.c2m.config import get_config
    from dmeta.c2m.protocol import cluster_metrics

    latent = np.random.default_rng(0).normal(size=(10, 2))
    labels = np.array([3, 3, 3, 3, 3, 3, 1, 1, 7, 7])  # 3 of the segments hold users
    got = cluster_metrics(latent, labels, np.ones(10, bool), get_config(smoke=True))
    assert got["segments"] == 3 and got["largest_share"] == 0.6


@pytest.mark.parametrize(
    "behaviors, message",
    [(("[buy]",), "unknown ['[buy]']"), (("view", "cart"), "none occurs")],
)
def test_pattern_behaviors_that_mine_nothing_are_refused(behaviors, message):
    from types import SimpleNamespace

    from dmeta.c2m.protocol import check_pattern_behaviors
    from dmeta.config import ConfigError

    events = pd.DataFrame({"behavior": pd.Categorical(["buy", "buy"], ["view", "cart", "buy"])})
    prep = SimpleNamespace(events=events, dataset="completejourney")
    with pytest.raises(ConfigError, match="completejourney's events are buy") as info:
        check_pattern_behaviors(prep, behaviors)
    assert message in str(info.value) and "\n" not in str(info.value)
    check_pattern_behaviors(prep, ("buy",))


def test_report_from_the_run_folder(smoke_run):
    _, _, out, _, _ = smoke_run
    text = render(out)
    assert text.startswith("# C2M on synthetic")
    assert "### Table 1 analog (1 seeds)" in text
    assert "### Case study (Ours, first seed)" in text
    assert (out / "results.md").read_text() == text


def test_tuning_scores_the_validation_users_of_the_reported_fit(monkeypatch):
    """Each grid point is fitted once on the fit users; its score is -SC of the held-out
    validation users, and the chosen point's fit is the one reported (no refit)."""
    from dmeta.c2m import protocol
    from experiments import c2m

    cfg = override(c2m.get_config(smoke=True), ["tuning.trials=2", "protocol.extras=false"])
    prep = protocol.prepare("synthetic", cfg)
    state = protocol.C2MRun(prep, cfg).seed_state(0)
    assert len(np.intersect1d(state.fit, state.val)) == 0
    assert len(state.fit) + len(state.val) == len(prep.users) and len(state.val) == 19
    fits = []
    monkeypatch.setattr(state, "_fit", lambda *a: fits.append(a[:2]) or _fake(a[2]))
    best = state.tuned("DC")
    assert len(fits) == 2 and best in [hp for _, hp in fits]
    got = state.segment("DC", best)
    assert len(fits) == 2 and got.labels.shape == (len(prep.users),)
    assert state.tuned("BoC-KM") == {} and len(fits) == 2  # nothing to tune: unscored


def test_shared_tuning_lets_later_seeds_reuse_the_first_seeds_choice(tmp_path, monkeypatch):
    from dmeta.c2m import protocol
    from experiments import c2m

    sets = ["tuning.trials=2", "tuning.per_seed=false", "protocol.extras=false"]
    cfg = override(c2m.get_config(smoke=True), sets)
    run = protocol.C2MRun(protocol.prepare("synthetic", cfg), cfg, tmp_path)
    fits = []
    best = {}
    for seed in (0, 1):
        state = run.seed_state(seed)
        monkeypatch.setattr(state, "_fit", lambda *a: fits.append(a[:2]) or _fake(a[2]))
        best[seed] = state.tuned("DC")
    assert len(fits) == 2 and best[0] == best[1]  # seed 1 scored no grid point
    assert (tmp_path / "tuned" / "table1__DC.json").exists()


def _fake(x):
    """A segmentation of ``len(x)`` users whose latent is a user's first item code."""
    from dmeta.c2m.train import Segmentation

    embed = lambda x, mask, category: x[:, :1, 1].astype(np.float32)
    z = embed(x, None, None)
    centroids = np.array([[z.min()], [z.max()]], np.float32)
    labels = np.abs(z - centroids.T).argmin(1).astype(np.int32)
    return Segmentation(labels, z, np.ones(len(x), np.float32), [], centroids, embed)


def test_pairwise_table_pairs_ours_with_every_method_by_seed():
    """Each cell: Ours minus the method (seed means), its paired t and the seeds Ours wins;
    Random only where it has the metric."""
    from dmeta.report.c2m import pairwise_markdown

    rows = [("Ours", "SC", [0.5, 0.6, 0.7]), ("DEC", "SC", [0.9, 0.95, 0.8]),
            ("Ours", "MPP", [0.2, 0.3, 0.25]), ("DEC", "MPP", [0.2, 0.2, 0.2]),
            ("Random", "MPP", [0.1, 0.1, 0.1])]  # fmt: skip
    t1 = pd.DataFrame(
        [
            dict(dataset="d", group="table1", method=m, metric=k, seed=s, value=v)
            for m, k, values in rows
            for s, v in enumerate(values)
        ]  # fmt: skip
    )
    lines = {row.split("|")[1].strip(): row for row in pairwise_markdown(t1).splitlines()[4:]}
    assert "-0.283 (p " in lines["DEC"] and ", 0/3)" in lines["DEC"]  # 0.6 - 0.883
    assert "+0.05 (p " in lines["DEC"] and ", 2/3)" in lines["DEC"]  # 0.25 - 0.2: 2 seeds higher
    assert "+0.15 (p " in lines["Random"] and lines["Random"].split("|")[2].strip() == ""
    assert pairwise_markdown(t1[t1.seed == 0]) == ""  # one seed: no test
