"""The C2M experiment end to end at smoke size: resume, report, tuning."""

import dataclasses

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


def test_resume_after_losing_a_cell_is_identical(smoke_run):
    c2m, cfg, out, kw, full = smoke_run
    assert set(full["method"]) == set(c2m.METHODS)
    assert {"SC", "CH", "MPP", "ARI", "hp:alpha", "hp:n_init"} <= set(full["metric"])
    (out / "cells" / "table1__DEC__seed0.csv").unlink()
    resumed = c2m.run(cfg, out=out, fresh=False, **kw)
    pd.testing.assert_frame_equal(resumed, full)


def test_report_from_the_run_folder(smoke_run):
    _, _, out, _, _ = smoke_run
    text = render(out)
    assert text.startswith("# C2M on synthetic")
    assert "### Table 1 analog (1 seeds)" in text
    assert "### Case study (Ours, first seed)" in text
    assert (out / "results.md").read_text() == text


def test_equal_tuning_scores_every_grid_point(tmp_path):
    from experiments import c2m

    cfg = c2m.get_config(smoke=True)
    cfg = dataclasses.replace(cfg, tuning=dataclasses.replace(cfg.tuning, trials=2))
    df = c2m.run(
        cfg, data="synthetic", out=tmp_path, seeds=1, methods=("BoC-KM",), fresh=True, command=""
    )
    assert df.loc[df["metric"] == "hp:n_init", "value"].item() in (4.0, 8.0, 16.0)
