"""CDLtvS experiment at smoke size: long results schema, report and figures, resume, scoring."""

import numpy as np
import pandas as pd
import pytest

from dmeta.config import override
from dmeta.ltv.data import apply_sparsity, make_synthetic
from dmeta.ltv.protocol import grid, model_at, score, usage_rows
from experiments import cdltvs

METHODS = ("ARIMA", "BG/NBD+GG", "LtvS", "CDLtvS")


def _run(out, **kw):
    cfg = override(cdltvs.get_config(smoke=True), ["protocol.ablations=false"])
    return cdltvs.run(
        cfg,
        data="synthetic",
        out=out,
        seeds=1,
        methods=METHODS,
        fresh=False,
        command="dmeta run cdltvs --smoke",
        **kw,
    )


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"] != "seconds"].reset_index(drop=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cdltvs")
    return out, _run(out)


def test_run_smoke_writes_results_and_figures(smoke_run):
    out, df = smoke_run
    assert list(df.columns) == [
        "experiment",
        "dataset",
        "method",
        "group",
        "seed",
        "metric",
        "value",
    ]
    assert set(df["experiment"]) == {"cdltvs"}
    table = df[df["metric"] == "nmae"]
    assert set(table["method"]) == {"ARIMA", "BG/NBD+GG", "LtvS", "CDLtvS", "k=2", "k=4"}
    assert {"P=0%/all", "P=50%/all", "P=50%/C_na", "P=50%/C_a"} <= set(table["group"])
    assert "P=0%/C_na" not in set(table["group"])  # no sparse customers at P = 0
    hp = df[df["metric"] == "hp:lr"]  # the k sweep is tuned like CDLtvS
    assert set(hp["method"]) == {"LtvS", "CDLtvS", "k=2", "k=4"} and (hp["value"] == 1e-3).all()
    share = df[df["metric"].str.startswith("expert_share_")]
    assert set(share["method"]) == set(hp["method"])
    total = share.assign(d=share["metric"].str[-2]).groupby(["method", "group", "d"])["value"]
    np.testing.assert_allclose(total.sum(), 1.0, rtol=1e-6)  # every test sample has an expert
    assert set(share[share["method"] == "LtvS"]["metric"].str[-2]) == {"t"}
    assert len(share[(share["method"] == "k=2") & (share["group"] == "P=0%/all")]) == 4
    for name in (
        "results.csv",
        "results.md",
        "command.txt",
        "config.json",
        "scatter_P=0_seed0.npz",
        "fig4_sparse_vs_nonsparse.png",
        "fig6_experts.png",
        "fig7_scatter_experts.png",
    ):
        assert (out / name).exists(), name
    md = (out / "results.md").read_text()
    assert "Table 1 analog" in md and "Chosen hyperparameters" in md and "Expert usage" in md
    assert pd.read_csv(out / "results.csv")["value"].notna().all()
    with np.load(out / "scatter_P=0_seed0.npz") as z:
        assert {"y", "ltvs", "ltvs_expert", "cd", "cd_expert"} == set(z.files)


def test_resumed_run_after_losing_a_cell_gives_identical_results(smoke_run, tmp_path):
    out, whole = smoke_run
    (out / "cells" / "P_50___CDLtvS__seed0.csv").unlink()  # needs stage 1 again
    pd.testing.assert_frame_equal(_scores(_run(out)), _scores(whole))


def test_score_groups_by_sparsity():
    d = apply_sparsity(make_synthetic(40, n_periods=4, horizon=1, seed=0), 0.5, seed=0)
    rows = score(d, d.t_y, "P=50%")
    got = {(r["group"], r["metric"]): r["value"] for r in rows}
    assert got[("P=50%/C_na", "nmae")] == 0.0 and np.isclose(got[("P=50%/all", "gini")], 1.0)


def test_usage_rows_share_and_entropy():
    rows = {r["metric"]: r["value"] for r in usage_rows({"t": np.array([0, 0, 1, 1])}, 4, "g")}
    assert rows == pytest.approx({"expert_share_t0": 0.5, "expert_share_t1": 0.5,
                                  "expert_share_t2": 0.0, "expert_share_t3": 0.0,
                                  "expert_entropy_t": 0.5})  # fmt: skip
    collapsed = usage_rows({"s": np.zeros(5, int)}, 2, "g")
    assert {r["metric"]: r["value"] for r in collapsed}["expert_entropy_s"] == 0.0


def test_paper_size_and_the_grid_points_model():
    cfg = cdltvs.get_config(size="paper")
    assert (cfg.model.hidden, cfg.model.align, cfg.model.k) == (128, 80, 4)
    assert cfg.data.transactions.max_customers is None and cfg.tuning.hidden == (64, 256)
    assert grid(cfg, "CDLtvS")["hidden"] == (128, 64, 256)
    small = model_at(cfg, "k=8", {"hidden": 64, "lr": 1e-3})
    assert (small.hidden, small.align, small.k) == (64, 40, 8)  # d/h as in the paper
    assert model_at(cfg, "CDLtvS", {"hidden": 128, "lr": 1e-3}) == cfg.model


def test_tuning_grids_start_at_the_configured_values():
    cfg = override(cdltvs.get_config(), ["tuning.lr=0.001,0.01", "train.lr=0.002"])
    assert grid(cfg, "CDLtvS") == {"lr": (0.002, 0.001, 0.01), "hidden": (32, 16, 64)}
    assert grid(cfg, "CDLtvS w/o L_AT") == grid(cfg, "CDLtvS")  # ablations: the same budget
    assert grid(cfg, "k=8") == grid(cfg, "CDLtvS")
    assert grid(override(cfg, ["tuning.hidden=12,64"]), "k=8")["hidden"] == (32, 64)
    assert grid(cfg, "XGBoost-2stage") == {
        "max_depth": (4, 3, 6),
        "learning_rate": (0.05, 0.02, 0.1),
    }
    assert grid(cfg, "ARIMA") == {}


def test_shared_tuning_fits_later_seeds_once_at_the_first_seeds_choice(tmp_path, monkeypatch):
    from dmeta.ltv import protocol

    sets = ["protocol.ablations=false", "tuning.trials=3", "tuning.per_seed=false"]
    cfg = override(cdltvs.get_config(smoke=True), sets)
    fits = []
    fit = protocol.Protocol._fit
    monkeypatch.setattr(
        protocol.Protocol, "_fit", lambda self, *a: fits.append(a[2]) or fit(self, *a)
    )
    df = cdltvs.run(cfg, data="synthetic", out=tmp_path, seeds=2, methods=("XGBoost-2stage",),
                    fresh=False, command="test")  # fmt: skip
    settings = df["group"].str.split("/").str[0].nunique()
    assert fits.count(0) == 3 * settings and fits.count(1) == settings
    hp = df[df["metric"] == "hp:max_depth"].pivot_table(
        index="group", columns="seed", values="value"
    )
    assert (hp[0] == hp[1]).all()
