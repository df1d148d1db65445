"""Reports regenerated from results.csv, and the check that committed tables match."""

from __future__ import annotations

import pandas as pd

from dmeta import report
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
