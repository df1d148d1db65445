"""RMLDP experiment end to end at smoke size: synthetic and a user table with an edge list."""

import dataclasses

import jax
import numpy as np
import pandas as pd

from dmeta.baselines import forecast_baselines as fb
from dmeta.data.synthetic import make_demand
from experiments import rmldp, rmldp_posthoc
from experiments.configs.rmldp import get_config


def test_smoke_run_writes_results_test_and_plots(tmp_path):
    out = tmp_path / "run"
    df = rmldp.run(
        data="synthetic",
        out=out,
        smoke=True,
        seeds=2,
        command="dmeta run rmldp --smoke",
        methods="Linear Regression,MAML,RMLDP",
    )
    assert set(df["method"]) == {"Linear Regression", "MAML", "RMLDP"}
    assert set(df["seed"]) == {0, 1} and {"mape", "mse", "seconds"} <= set(df["metric"])
    assert {"all", "cat0", "cat1"} <= set(df["group"])
    assert df[df["metric"] == "mape"]["value"].notna().all()
    for name in ("results.csv", "results.md", "command.txt", "config.json", "segments.csv"):
        assert (out / name).exists(), name
    assert (out / "rmldp_segment_map.png").stat().st_size > 0
    assert (out / "rmldp_sweep.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "RMLDP vs MAML, paired t-test" in md and "p_two_sided" in md

    rmldp_posthoc.main([str(out)])  # the same run against the generator's planted response
    truth = make_demand(**rmldp.synthetic_kwargs(get_config(smoke=True))).truth
    wide = pd.read_csv(out / "planted_response.csv")
    index = wide["segment"].str.removeprefix("seg").astype(int)
    np.testing.assert_allclose(wide["gamma"], truth["carryover"][index])
    np.testing.assert_allclose(wide["gain"], wide["MAML"] - wide["RMLDP"])
    posthoc = (out / "posthoc.md").read_text()
    assert "Spearman" in posthoc and "| RMLDP | MAML |" in posthoc
    assert (out / "planted_response.png").stat().st_size > 0


def test_table_data_with_edges_runs_the_protocol(tmp_path):
    demand = make_demand(n_segments=12, n_clusters=2, n_steps=120, freq="W", seed=1)
    frame = demand.frame.merge(demand.segments[["unique_id", "category"]], on="unique_id")
    table = tmp_path / "demand.csv"
    frame.to_csv(table, index=False)
    pairs = demand.baskets.merge(demand.baskets, on="basket_id")
    edges = pairs[pairs["unique_id_x"] < pairs["unique_id_y"]]
    edges = edges.rename(columns={"unique_id_x": "src", "unique_id_y": "dst"})[["src", "dst"]]
    edges.to_csv(tmp_path / "edges.csv", index=False)
    df = rmldp.run(
        data=f"table:{table}",
        out=tmp_path / "t",
        smoke=True,
        seeds=1,
        command="x",
        methods="XGBoost,RMLDP-d",
        edges=str(tmp_path / "edges.csv"),
        no_sweep=True,
        horizon_gap=2,
        horizon_len=2,
    )
    assert set(df["dataset"]) == {"demand"} and set(df["method"]) == {"XGBoost", "RMLDP-d"}
    assert pd.read_csv(tmp_path / "t" / "segments.csv")["segment"].nunique() >= 1


def test_data_parallel_remat_and_strategy_flags_match_the_plain_run(tmp_path):
    kw = dict(data="synthetic", smoke=True, seeds=1, command="x", methods="RMLDP", no_sweep=True)
    plain = rmldp.run(out=tmp_path / "a", **kw)
    scaled = rmldp.run(out=tmp_path / "b", data_parallel=True, remat=True, **kw)
    mapped = rmldp.run(out=tmp_path / "c", strategy="map_remat", **kw)
    mape = [d[d["metric"] == "mape"].set_index("group")["value"] for d in (plain, scaled, mapped)]
    pd.testing.assert_series_equal(mape[0], mape[1], rtol=1e-4)
    pd.testing.assert_series_equal(mape[0], mape[2], rtol=1e-4)


def test_finetune_budget_is_chosen_on_meta_validation_and_skips_divergence():
    cfg = dataclasses.replace(
        get_config(smoke=True), finetune_steps=(1, 2), finetune_lrs=(1e6, 0.0, 1e-3)
    )
    prep = rmldp.prepare(rmldp.synthetic_data(cfg), cfg, seq_len=cfg.seq_len)
    apply, params = fb.build_neural(
        "gru_mpfn",
        prep.pool.values.shape[-1],
        cfg.hidden,
        seq_len=cfg.seq_len,
        key=jax.random.key(0),
    )
    steps, lr = rmldp.finetune_budget(apply, params, prep, cfg)
    assert steps in (1, 2) and lr in (0.0, 1e-3)


def test_finetune_starts_from_the_same_seeds_gru_mpfn_model():
    cfg = dataclasses.replace(get_config(smoke=True), finetune_lrs=(0.0,))
    prep = rmldp.prepare(rmldp.synthetic_data(cfg), cfg, seq_len=cfg.seq_len)
    kw = dict(prep=prep, cfg=cfg, graph_emb=None, seed=3, seq_len=cfg.seq_len, runners={})
    np.testing.assert_allclose(
        rmldp.predict("Fine-tune", **kw), rmldp.predict("GRU+MPFN", **kw), rtol=1e-5, atol=1e-6
    )
