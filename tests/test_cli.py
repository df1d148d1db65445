"""The dmeta command line: help, config printing and overrides, one-line errors, reports, demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dmeta.config import flatten, format_config, override
from dmeta.data.spec import DataSpec, data_root, parse_data_spec
from experiments import cli

EXPERIMENTS = ["c2m", "cdltvs", "rmldp", "sales_cnn", "stmp"]
RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_help_lists_commands_and_experiments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "run", "config", "report"):
        assert command in out
    assert sorted(cli.discover()) == EXPERIMENTS


def test_an_experiment_whose_package_is_missing_is_left_out_and_the_others_run():
    code = (
        "import sys; sys.modules['polars'] = None; from experiments import cli; "
        "print(','.join(cli.discover())); cli.main(['config', 'rmldp', '--smoke'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = result.stdout.splitlines()[0].split(",")
    assert "c2m" not in names and "rmldp" in names and "train.meta_steps" in result.stdout
    assert "experiment c2m left out: it needs polars" in result.stderr


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "run", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for name in EXPERIMENTS:
        assert name in result.stdout


def test_library_does_not_import_experiments():
    offenders = [
        str(path)
        for path in (Path(__file__).resolve().parents[1] / "dmeta").rglob("*.py")
        if "import experiments" in path.read_text() or "from experiments" in path.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("size", ["cpu", "paper"])
@pytest.mark.parametrize("smoke", [False, True])
def test_every_printed_config_field_can_be_set_to_its_value(name, size, smoke):
    module = cli.discover()[name]
    cfg = module.get_config(smoke=smoke, size=size)
    printed = format_config(cfg).splitlines()
    assert len(printed) == len(flatten(cfg)) > 5
    assert override(cfg, [line.replace(" = ", "=", 1) for line in printed]) == cfg
    assert isinstance(flatten(cfg)["train.data_parallel"], bool)


def test_config_command_and_set(capsys):
    assert cli.main(["config", "rmldp", "--smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("train.data_parallel = false") for line in lines)
    args = cli.build_parser(cli.discover()).parse_args(
        ["run", "rmldp", "--data-parallel", "--set", lines[0].replace(" = ", "=")]
    )
    assert flatten(cli.configure(cli.discover()["rmldp"], args))["train.data_parallel"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "stmp", "--smoke", "--set", "model.nope=1"], "unknown config path 'model.nope'"),
        (["run", "stmp", "--smoke", "--methods", "Nope"], "--methods: unknown ['Nope']"),
        (["run", "stmp", "--smoke", "--data", "table:/no/such.csv"], "does not exist"),
        (["run", "stmp", "--smoke", "--workers", "2", "--fresh"], "combined with --fresh"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any log lines
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out" / "config.json").exists()  # nothing written before validation


def test_seeds_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "stmp", "--seeds", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_committed_results_match_their_regeneration(capsys):
    assert cli.main(["report", "--check", str(RESULTS)]) == 0, capsys.readouterr().out


def test_parse_data_spec(tmp_path):
    assert parse_data_spec("synthetic") == DataSpec("synthetic", None)
    assert parse_data_spec(f"table:{tmp_path}") == DataSpec("table", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_data_spec(f"table:{tmp_path / 'missing.csv'}")
    with pytest.raises(ValueError, match="give a path"):
        parse_data_spec("mydata")


def test_named_spec_resolves_to_shared_folder():
    if not (data_root() / "walmart_recruiting").exists():
        pytest.skip(f"shared data not found at {data_root()} (set DMETA_DATA)")
    assert parse_data_spec("walmart").path == data_root() / "walmart_recruiting"


@pytest.mark.slow  # CI runs the whole `make demo` itself (.ci/run)
def test_demo_smoke_writes_report(tmp_path):
    assert cli.main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# dmeta demo")
    for name in EXPERIMENTS:
        assert f"_{name}:" in report
    for png in tmp_path.rglob("*.png"):
        assert png.stat().st_size > 1000


def test_validate_prints_a_summary_or_a_located_error(tmp_path, capsys):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("unique_id,ds,y\n007,2020-01-01,1\n7,2020-01-01,2\n007,2020-01-02,3\n")
    bad.write_text("unique_id,ds,y\n007,2020-01-01,1\n7,2020-01-02,x\n")
    assert cli.main(["validate", "--data", f"table:{good}"]) == 0
    assert "2 unique_id" in capsys.readouterr().out  # '007' and '7' stay two series
    assert cli.main(["validate", "--data", f"table:{bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {bad}: column 'y', line 3: is not a number (values 'x')"


def test_recorded_command_resumes_instead_of_starting_over():
    argv = ["run", "stmp", "--seeds", "2", "--set", "train.lr=0.01", "--out", "a b", "--fresh"]
    assert cli.recorded_command(argv) == "dmeta run stmp --seeds 2 --set train.lr=0.01 --out 'a b'"


def test_interim_report_needs_a_run_folder(capsys, tmp_path):
    assert cli.main(["report", str(tmp_path), "--interim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "not a run folder (no cells/order.txt)" in err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 workers")
def test_workers_run_each_cell_of_one_run_once(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", "sales_cnn", "--smoke", "--out", str(out), "--workers", "2"]) == 0
    logs = [(out / "workers" / f"{i}.log").read_text() for i in range(2)]
    written = [
        line.split("] ", 1)[1].split(" written in ")[0]
        for log in logs
        for line in log.splitlines()
        if " written in " in line
    ]
    assert sorted(written) == sorted((out / "cells" / "order.txt").read_text().split())
    assert len(pd.read_csv(out / "results.csv")) > 0
    assert "--workers" not in (out / "command.txt").read_text()
