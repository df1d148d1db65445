"""The dmeta command line: help, data specs, and the smoke demo end to end."""

import subprocess
import sys

import pytest

from dmeta import cli
from dmeta.data.spec import DataSpec, data_root, parse_data_spec


def test_help_lists_commands_and_experiments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "run" in out


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "dmeta.cli", "run", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for name in cli.discover():
        assert name in result.stdout


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


def test_demo_smoke_writes_report(tmp_path):
    assert cli.main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# dmeta demo")
    for name, module in cli.discover().items():
        if hasattr(module, "demo"):
            assert f"_{name}:" in report
    for png in tmp_path.rglob("*.png"):
        assert png.stat().st_size > 1000


@pytest.mark.parametrize("name", ["rmldp", "stmp", "cdltvs", "c2m", "sales_cnn"])
def test_every_experiment_takes_the_data_parallel_flag(name):
    parser = cli.build_parser(cli.discover())
    assert parser.parse_args(["run", name, "--data-parallel"]).data_parallel is True
    assert parser.parse_args(["run", name]).data_parallel is None  # the config's default


def test_rmldp_carryover_levels_flag_parses_negative_levels():
    parser = cli.build_parser(cli.discover())
    args = parser.parse_args(["run", "rmldp", "--carryover-levels=-1,1,-1,1"])
    assert args.carryover_levels == (-1.0, 1.0, -1.0, 1.0)
