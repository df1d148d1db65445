"""Training utilities: results tables, significance tests, logs, checkpoints, the fit loop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from dmeta.train import results


def _results_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for dataset in ("d1", "d2"):
        for group in ("all", "g|1"):
            for method in ("ours", "base"):
                for s in range(5):
                    for metric in ("mape", "rmse"):
                        shift = 0.0 if method == "ours" else 0.3
                        rows.append(
                            ("exp", dataset, method, group, s, metric, rng.random() + shift)
                        )
    return pd.DataFrame(rows, columns=list(results.COLUMNS))


def test_write_run_header(tmp_path):
    results.write_run_header(tmp_path / "run", "dmeta run x --smoke", {"lr": 0.1, "p": tmp_path})
    assert (tmp_path / "run" / "command.txt").read_text() == "dmeta run x --smoke\n"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config == {"lr": 0.1, "p": str(tmp_path)}


def test_write_results_files_and_summary(tmp_path):
    df = _results_frame()
    summary = results.write_results(df, tmp_path, title="T", extra_md="extra *text*")
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back.columns) == list(results.COLUMNS)
    np.testing.assert_allclose(back["value"], df["value"])
    assert len(summary) == 2 * 2 * 2 * 2
    cell = df[(df.dataset == "d2") & (df.group == "all") & (df.method == "base")]
    cell = cell[cell.metric == "rmse"]["value"]
    row = summary[
        (summary.dataset == "d2")
        & (summary.group == "all")
        & (summary.method == "base")
        & (summary.metric == "rmse")
    ]
    np.testing.assert_allclose(row["mean"], cell.mean())
    np.testing.assert_allclose(row["std"], cell.std(ddof=1))
    assert row["n"].item() == 5
    md = (tmp_path / "results.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# T"
    assert "## exp" in lines
    header = next(line for line in lines if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "dataset",
        "group",
        "method",
        "mape",
        "rmse",
        "n",
    ]
    assert f"{cell.mean():.4g} ± {cell.std(ddof=1):.2g}" in md
    assert "g\\|1" in md  # pipes in cells are escaped
    assert md.rstrip().endswith("extra *text*")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 2 * 2 * 2  # header, rule, (dataset, group, method) rows
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_write_results_single_seed_and_nonfinite(tmp_path, caplog):
    df = _results_frame().query("seed == 0").reset_index(drop=True)
    df.loc[3, "value"] = np.nan
    summary = results.write_results(df, tmp_path)
    assert "non-finite" in caplog.text
    assert summary["std"].isna().all()
    assert summary["n"].sum() == len(df) - 1
    assert "±" not in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("column", results.COLUMNS)
def test_write_results_missing_column(tmp_path, column):
    with pytest.raises(ValueError, match=f"'{column}'"):
        results.write_results(_results_frame().drop(columns=column), tmp_path)
    assert not (tmp_path / "results.csv").exists()


def test_write_results_bad_value_and_duplicates(tmp_path):
    df = _results_frame()
    df["value"] = df["value"].astype(object)
    df.loc[7, "value"] = "oops"
    with pytest.raises(ValueError, match="'value' row 7"):
        results.write_results(df, tmp_path)
    df = _results_frame()
    with pytest.raises(ValueError, match=r"rows \[0, 80\] repeat"):
        results.write_results(pd.concat([df, df.iloc[:1]]), tmp_path)


@pytest.mark.parametrize(
    ("test", "reference"), [("ttest", scipy.stats.ttest_rel), ("wilcoxon", scipy.stats.wilcoxon)]
)
def test_significance_table_matches_scipy(test, reference):
    df = _results_frame().sample(frac=1.0, random_state=0)  # pairing must not rely on order
    table = results.significance_table(df, "ours", "base", "mape", test=test)
    assert list(table.columns) == [
        "dataset",
        "group",
        "mean_a",
        "mean_b",
        "diff",
        "statistic",
        "p_value",
        "n",
    ]
    assert len(table) == 4
    for row in table.itertuples():
        cell = df[(df.dataset == row.dataset) & (df.group == row.group) & (df.metric == "mape")]
        a = cell[cell.method == "ours"].sort_values("seed")["value"].to_numpy()
        b = cell[cell.method == "base"].sort_values("seed")["value"].to_numpy()
        ref = reference(a, b)
        np.testing.assert_allclose([row.statistic, row.p_value], [ref.statistic, ref.pvalue])
        np.testing.assert_allclose([row.mean_a, row.mean_b], [a.mean(), b.mean()])
        np.testing.assert_allclose(row.diff, a.mean() - b.mean())
        assert row.n == 5


def test_significance_table_pair_on_group_and_unpaired(caplog):
    df = _results_frame().query("seed == 0 and dataset == 'd1'")
    # per-segment scores stored in `group`; segment "g|1" is missing for method b.
    df = df[~((df.method == "base") & (df.group == "g|1"))]
    a0, b0 = df[(df.method == "ours") & (df.group == "all")], df[df.method == "base"]
    extra = [
        a0.assign(group="seg2"),
        b0.assign(group="seg2", value=lambda d: d["value"] + 1.0),
        b0.assign(group="seg3", value=lambda d: d["value"] + 2.0),
        a0.assign(group="seg3", value=lambda d: d["value"] * 0.5),
    ]
    df = pd.concat([df, *extra], ignore_index=True)
    table = results.significance_table(df, "ours", "base", "rmse", by=(), pair_on="group")
    assert "without a pair" in caplog.text
    assert table["n"].tolist() == [3]
    sel = df[df.metric == "rmse"]
    a = sel[sel.method == "ours"].set_index("group")["value"]
    b = sel[sel.method == "base"].set_index("group")["value"]
    units = ["all", "seg2", "seg3"]
    ref = scipy.stats.ttest_rel(a[units], b[units])
    np.testing.assert_allclose(table[["statistic", "p_value"]].iloc[0], [ref.statistic, ref.pvalue])


def test_significance_table_errors():
    df = _results_frame()
    with pytest.raises(ValueError, match="no rows for method='nope'"):
        results.significance_table(df, "ours", "nope", "mape")
    with pytest.raises(ValueError, match="aggregate"):
        results.significance_table(df, "ours", "base", "mape", by=("dataset",))
    with pytest.raises(ValueError, match="pair_on"):
        results.significance_table(df, "ours", "base", "mape", pair_on="group")
    with pytest.raises(ValueError, match="test must be"):
        results.significance_table(df, "ours", "base", "mape", test="anova")


def test_significance_table_too_few_pairs(caplog):
    df = _results_frame().query("seed == 0")
    table = results.significance_table(df, "ours", "base", "mape")
    assert table["p_value"].isna().all() and (table["n"] == 1).all()
    assert "no test" in caplog.text


def test_markdown_table():
    md = results.markdown_table(pd.DataFrame({"a": ["x", "y|z"], "p": [0.123456, 1e-9]}))
    assert md.splitlines() == [
        "| a    | p      |",
        "| ---- | ------ |",
        "| x    | 0.1235 |",
        "| y\\|z | 1e-09  |",
    ]
