"""``experiments.compare_runs``: agreeing runs pass, a changed or missing row fails."""

import pandas as pd

from experiments import compare_runs


def _write(folder, values):
    folder.mkdir()
    rows = [
        {
            "experiment": "stmp",
            "dataset": "d",
            "method": m,
            "group": "g",
            "seed": 0,
            "metric": "mse",
            "value": v,
        }
        for m, v in values.items()
    ]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_agree_differ_and_missing(tmp_path, capsys):
    a = _write(tmp_path / "a", {"XGBoost": 1.0, "STMP": 2.0})
    same = _write(tmp_path / "same", {"XGBoost": 1.0, "STMP": 5.0})
    moved = _write(tmp_path / "moved", {"XGBoost": 1.5, "STMP": 2.0})
    gone = _write(tmp_path / "gone", {"STMP": 2.0})
    assert compare_runs.main([str(a), str(same), "--methods", "XGBoost"]) == 0
    assert compare_runs.main([str(a), str(moved), "--methods", "XGBoost"]) == 1
    assert compare_runs.main([str(a), str(moved), "--methods", "XGBoost", "--rtol", "0.6"]) == 0
    assert compare_runs.main([str(a), str(gone), "--methods", "XGBoost"]) == 1
    assert compare_runs.main([str(a), str(same), "--methods", "Naive"]) == 1
    assert "no rows in either run" in capsys.readouterr().out
    nan = _write(tmp_path / "nan", {"XGBoost": float("nan"), "STMP": float("nan")})
    nan_too = _write(tmp_path / "nan_too", {"XGBoost": float("nan"), "STMP": 1.0})
    assert compare_runs.main([str(nan), str(nan_too), "--methods", "XGBoost"]) == 0
    assert compare_runs.main([str(nan), str(nan_too), "--methods", "STMP"]) == 1
    assert compare_runs.main([str(a), str(same), "--methods", "XGBoost", "--metrics", "mae"]) == 1


def test_paired_over_groups(tmp_path, capsys):
    def write(folder, shift):
        folder.mkdir()
        rows = [
            dict(experiment="sales_cnn", dataset="d", method="CNN", group=g, seed=s,
                 metric="mse", value=10.0 * (i + 1) + s + shift * (i + 1))
            for i, g in enumerate(["r1", "r2", "r3", "r4"]) for s in (0, 1)
        ]  # fmt: skip
        pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
        return folder

    a, b = write(tmp_path / "a", 0.0), write(tmp_path / "b", -1.0)
    assert compare_runs.main([str(a), str(b), "--methods", "CNN", "--paired"]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    # seed means 10.5, 20.5, 30.5, 40.5 against 9.5, 18.5, 27.5, 36.5: b lower everywhere
    assert line[:4] == ["CNN", "mse", "25.5", "23"] and line[-1] == "4/4", line
    table = compare_runs.paired(*(compare_runs.load(r, ["CNN"], None) for r in (a, b)))
    assert table.loc[0, "p_ttest"] < 0.05
    only_b = pd.read_csv(b / "results.csv").assign(method="DNN")
    pd.concat([pd.read_csv(b / "results.csv"), only_b]).to_csv(b / "results.csv", index=False)
    table = compare_runs.paired(*(compare_runs.load(r, ["CNN", "DNN"], None) for r in (a, b)))
    assert table["method"].tolist() == ["CNN"]
    assert "DNN mse: in one run only, not tested" in capsys.readouterr().out
