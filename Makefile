# Two commands for a new user: `make demo` and `make test`. Each creates .venv if
# missing, installs what it needs (re-installs only when pyproject.toml changes) and runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: demo test test-slow notebooks bench lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) -e ".[baselines]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.core
	$(PIP) -e ".[baselines,dev]"
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(PIP) -e ".[baselines,dev,bench]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/dmeta demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -m slow

notebooks: $(VENV)/.dev
	$(BIN)/python -m pytest -m notebook

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.bench
	$(BIN)/python experiments/benchmarks/run_all.py --out experiments/results/benchmarks.md
