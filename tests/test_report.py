"""Reports regenerated from results.csv, and the check that committed tables match."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dmeta import report
from dmeta.report import glance
from dmeta.train import harness


def _run(folder, value):
    rows = [
        dict(
            experiment="toy",
            dataset="d",
            method=m,
            seed=s,
            group="all",
            metric="mse",
            value=value + s,
        )
        for m in ("a", "b")
        for s in range(2)
    ]
    harness.finish(folder, pd.DataFrame(rows))


def test_regenerate_and_check_readme_blocks(tmp_path):
    _run(tmp_path / "run", 1.0)
    readme = tmp_path / "README.md"
    readme.write_text("# Toy\n\n<!-- report: run -->\nhand-typed 0.123\n<!-- /report -->\n\nEnd.\n")
    assert report.regenerate(tmp_path, check=True) == [str(readme)]
    report.regenerate(tmp_path)
    text = readme.read_text()
    assert "hand-typed" not in text and "1.5 ± 0.71" in text and text.endswith("End.\n")
    assert report.regenerate(tmp_path, check=True) == []
    assert report._relink("![a](x.png) [b](https://e.org) [c](../y.md)", "run") == (
        "![a](run/x.png) [b](https://e.org) [c](run/../y.md)"
    )
    (tmp_path / "run" / "results.md").write_text("edited\n")
    assert report.regenerate(tmp_path, check=True) == [str(tmp_path / "run" / "results.md")]


def test_glance_block_lays_runs_over_each_other_and_pairs_seeds(tmp_path):
    """A README block naming a JSON spec renders the experiment's glance table: a row's runs
    are layered (a later run's methods replace an earlier one's), margins pair seeds."""

    def write(run, rows):
        run.mkdir()
        frame = pd.DataFrame(
            [dict(experiment="stmp", dataset="d", method=m, group="full/regular", seed=s,
                  metric="mse", value=v)
             for m, values in rows for s, v in enumerate(values)]
        )  # fmt: skip
        frame.to_csv(run / "results.csv", index=False)

    write(tmp_path / "first", [("STMP", [40e3, 44e3, 42e3]), ("XGBoost", [50e3, 50e3, 47e3]),
                               ("LSTM", [30e3, 31e3, 29e3])])  # fmt: skip
    write(tmp_path / "second", [("STMP", [20e3, 21e3, 22e3]), ("LSTM", [25e3, 26e3, 24e3])])
    spec = dict(experiment="stmp", against=["XGBoost", "LSTM"], rows=[
        dict(label="one run", group="full/regular", runs=["first"]),
        dict(label="layered", group="full/regular", runs=["first", "second"]),
    ])  # fmt: skip
    (tmp_path / "glance.json").write_text(json.dumps(spec))
    readme = tmp_path / "README.md"
    readme.write_text("# Toy\n\n<!-- report: glance.json -->\n<!-- /report -->\n")
    report.regenerate(tmp_path)
    rows = {r.split("|")[1].strip(): r for r in readme.read_text().splitlines() if "|" in r}
    assert "| 42.0k " in rows["one run"] and "+14.3% (p " in rows["one run"]  # 1 - 42/49
    assert "-40.0% (p " in rows["one run"]  # LSTM 30k: (30 - 42) / 30
    assert (
        "| 21.0k " in rows["layered"] and "+57.1% (p " in rows["layered"]
    )  # XGBoost 49k, from first
    assert "+16.0% (p " in rows["layered"]  # LSTM from second: (25 - 21) / 25
    assert report.regenerate(tmp_path, check=True) == []


def test_claims_glance_ranks_pairs_and_marks_what_a_run_lacks(tmp_path):
    """A claims table: "best" ranks the claimed method and lists who is ahead, "beats" pairs
    two methods over seeds, "value" summarizes one; a run without the metric reads "not run"."""
    run = tmp_path / "run"
    run.mkdir()
    sc = {"Ours": [0.50, 0.52, 0.51], "DEC": [0.70, 0.75, 0.72], "AE": [0.30, 0.31, 0.33]}
    rows = [dict(experiment="c2m", dataset="d", method=m, group="table1", seed=s, metric="SC",
                 value=v) for m, values in sc.items() for s, v in enumerate(values)]  # fmt: skip
    rows += [dict(rows[0], metric="recall", value=1.0)]
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    spec = {"table": "claims", "columns": [{"label": "run", "runs": ["run"]}], "claims": [
        {"label": "best", "kind": "best", "ours": "Ours", "metric": "SC"},
        {"label": "best of two", "kind": "best", "ours": "Ours", "metric": "SC",
         "exclude": ["DEC"]},
        {"label": "beats", "kind": "beats", "a": "Ours", "b": "AE", "metric": "SC"},
        {"label": "lower beats", "kind": "beats", "a": "Ours", "b": "AE", "metric": "SC",
         "higher": False},
        {"label": "value", "kind": "value", "method": "Ours", "metric": "recall"},
        {"label": "missing", "kind": "value", "method": "Ours", "metric": "CH"},
    ]}  # fmt: skip
    (tmp_path / "glance.json").write_text(json.dumps(spec))
    text = glance.render(tmp_path / "glance.json")
    cells = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in text.splitlines()}
    assert cells["best"].startswith("reversed, Ours #2 of 3: 0.51 vs DEC 0.723 (p ")
    assert cells["best of two"].startswith("holds: Ours 0.51 vs AE 0.313 (p ")
    assert cells["beats"].startswith("holds: 0.51 vs 0.313 (p ") and cells["beats"].endswith(
        ", 3/3)"
    )
    assert cells["lower beats"].startswith("reversed: ") and cells["lower beats"].endswith(", 0/3)")
    assert cells["value"] == "1" and cells["missing"] == "not run"
    # segments as units: each averaged over seeds, paired over segments, medians shown
    segs = [dict(experiment="r", dataset="d", method=m, group=f"seg:{g}", seed=s, metric="mape",
                 value=(1.0 if m == "A" else 2.0) * (g + 1) + s)
            for m in ("A", "B") for g in range(6) for s in range(2)]  # fmt: skip
    (tmp_path / "segs").mkdir()
    pd.DataFrame(segs).to_csv(tmp_path / "segs" / "results.csv", index=False)
    spec = {"table": "claims", "columns": [{"label": "segs", "runs": ["segs"], "segments": "seg:",
            "center": "median", "test": "wilcoxon"}], "claims": [
        {"label": "A < B", "kind": "beats", "a": "A", "b": "B", "metric": "mape", "higher": False}
    ]}  # fmt: skip
    (tmp_path / "glance.json").write_text(json.dumps(spec))
    text = glance.render(tmp_path / "glance.json")
    assert "| holds: 4 vs 7.5 (p 0.031, 6/6) |" in text, text  # medians of 1.5..6.5, 3..13
    del spec["claims"][0]["kind"]
    (tmp_path / "glance.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="glance.json: .* lacks the key 'kind'"):
        glance.render(tmp_path / "glance.json")


def test_rmldp_report_shows_the_median_and_the_segments_that_dominate():
    from dmeta.report import rmldp

    segments = pd.DataFrame(
        [
            dict(segment=str(i), method="M", seed=s, mape=(1e6 if i == 3 else 0.3), mse=1.0)
            for i in range(6)
            for s in range(2)
        ]
    )
    table, dominant = rmldp.robust(segments)
    assert table.loc[0, "mape_median"] == 0.3 and table.loc[0, "mape_mean"] > 1e5
    assert dominant[["method", "metric", "segment"]].values.tolist() == [["M", "mape", "3"]]


def test_last_quarter_best_gain_passes_a_noisy_plateau_not_a_falling_curve():
    from dmeta.report.convergence import FLAT, last_quarter_best_gain, last_quarter_gain

    # best at row 1, a spike just before the last quarter, noise above the best after it:
    # an early-stopped plateau; its fall from the spike fails the first rule, not the best's
    plateau = [0.60, 0.50, 0.55, 0.53, 0.56, 0.54, 0.70, 0.58, 0.55, 0.57]
    np.testing.assert_allclose(last_quarter_gain(plateau), (0.70 - 0.55) / 0.70)
    np.testing.assert_allclose(last_quarter_best_gain(plateau), (0.50 - 0.55) / 0.50)
    # still setting new lows in the last quarter: fails both
    falling = [1.0, 0.9, 0.85, 0.8, 0.78, 0.76, 0.74, 0.72, 0.70, 0.65]
    np.testing.assert_allclose(last_quarter_best_gain(falling), (0.74 - 0.65) / 0.74)
    assert last_quarter_gain(falling) > FLAT
    assert np.isnan(last_quarter_best_gain([1.0, 0.5, 0.4]))


def test_convergence_section_from_saved_curves(tmp_path):
    from dmeta.report import convergence

    flat = tmp_path / "curves" / "main__CNN_WD__seed0"
    rising = tmp_path / "curves" / "main__DNN__seed0"
    for folder in (flat, rising):
        folder.mkdir(parents=True)
    steps = np.arange(1, 13)
    pd.DataFrame({"step": steps, "loss": 1 / steps, "val_loss": 1 + 1 / steps**3}).to_csv(
        flat / "000-cnn-ab12.csv", index=False
    )
    pd.DataFrame({"step": steps, "loss": 1 / steps}).to_csv(rising / "000-dnn.csv", index=False)
    table = convergence.fits(tmp_path, ["CNN+WD", "DNN"]).set_index("method")
    assert table.loc["CNN+WD", "metric"] == "val_loss" and table.loc["CNN+WD", "converged"]
    assert table.loc["DNN", "metric"] == "loss" and not table.loc["DNN", "converged"]
    np.testing.assert_allclose(table.loc["DNN", "gain"], (1 / 9 - 1 / 12) / (1 / 9))
    assert table.loc["CNN+WD", "best_flat"] and not table.loc["DNN", "best_flat"]
    text = convergence.section(tmp_path, ["CNN+WD", "DNN"])
    assert "| CNN+WD" in text and "1/1" in text and "0/1" in text and "best flat" in text
    assert convergence.section(tmp_path / "none") == ""
    # a fit that diverged before its first row left an empty curve: counted, not converged
    (flat / "001-cnn-cd34.csv").write_text("\n")
    table = convergence.fits(tmp_path, ["CNN+WD", "DNN"])
    empty = table[table["fit"] == "001-cnn-cd34"].iloc[0]
    assert empty["rows"] == 0 and not empty["converged"]
    assert "1/2" in convergence.section(tmp_path, ["CNN+WD", "DNN"])
