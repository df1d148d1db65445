"""``experiments.followup``: a follow-up's rerun methods replace the reference's rows."""

import pandas as pd

from experiments import followup

REGIONS = ["r1", "r2", "r3", "r4", "r5"]


def _write(folder, values):
    """A Sales CNN results.csv: ``values`` maps method -> its MSE in the first region (2 seeds,
    +-0.1; one more per region, ``average`` last)."""
    folder.mkdir()
    rows = [
        dict(experiment="sales_cnn", dataset="d", method=m, group=g, seed=s, metric="mse",
             value=base + i + 0.1 * (2 * s - 1))
        for m, base in values.items()
        for i, g in enumerate([*REGIONS, "average"])
        for s in (0, 1)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_followup_rows_replace_the_reference_rows(tmp_path):
    ref = _write(tmp_path / "ref", {"CNN": 10.0, "CNN+WD": 20.0})
    fol = _write(tmp_path / "fol", {"CNN+WD": 5.0})
    scores = followup.combine(*(pd.read_csv(d / "results.csv") for d in (ref, fol)))
    assert sorted(scores.groupby("method")["value"].mean().round(1).items()) == [
        ("CNN", 12.5),
        ("CNN+WD", 7.5),
    ]
    md = followup.followup_markdown(ref, fol, "cmd")
    assert "Regenerate: `cmd`" in md
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()]
    claim = next(r for r in rows if r and r[0] == "CNN+WD < CNN")
    assert claim[-2:] == ["5/5", "holds"]  # with the reference's CNN+WD: reversed
    self_test = next(r for r in rows if r[:2] == ["CNN+WD", "mse"])
    assert self_test[2:4] == ["22", "7"]  # regions only and self_test[-1] == "5/5"
