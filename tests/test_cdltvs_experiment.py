"""CDLtvS experiment at smoke size: long results schema, Table 1 analog, figures, demo."""

import pandas as pd

from experiments import cdltvs


def test_run_smoke_writes_results_and_figures(tmp_path):
    df = cdltvs.run(
        data="synthetic",
        out=tmp_path,
        smoke=True,
        seeds=1,
        command="dmeta run cdltvs --smoke",
        methods="ARIMA,BG/NBD+GG",
        no_ablations=True,
    )
    assert list(df.columns) == [
        "experiment",
        "dataset",
        "method",
        "group",
        "seed",
        "metric",
        "value",
    ]
    table = df[(df["experiment"] == "table1") & (df["metric"] == "nmae")]
    assert set(table["method"]) == {"ARIMA", "BG/NBD+GG", "LtvS", "CDLtvS"}
    assert {"P=0%/all", "P=50%/all", "P=50%/C_na", "P=50%/C_a"} <= set(table["group"])
    assert "P=0%/C_na" not in set(table["group"])  # no sparse customers at P = 0
    assert set(df.loc[df["experiment"] == "experts", "method"]) == {"k=2", "k=4"}
    for name in (
        "results.csv",
        "results.md",
        "command.txt",
        "config.json",
        "fig4_sparse_vs_nonsparse.png",
        "fig6_experts.png",
        "fig7_scatter_experts.png",
    ):
        assert (tmp_path / name).exists(), name
    assert "Table 1 analog" in (tmp_path / "results.md").read_text()
    assert pd.read_csv(tmp_path / "results.csv")["value"].notna().all()


def test_score_groups_by_sparsity():
    import numpy as np

    from dmeta.ltv.data import apply_sparsity, make_synthetic

    d = apply_sparsity(make_synthetic(40, n_periods=4, horizon=1, seed=0), 0.5, seed=0)
    rows = cdltvs.score(d, d.t_y, "P=50%")
    got = {(r["group"], r["metric"]): r["value"] for r in rows}
    assert got[("P=50%/C_na", "nmae")] == 0.0 and np.isclose(got[("P=50%/all", "gini")], 1.0)
