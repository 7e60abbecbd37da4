# The two commands of the README. Both build .venv from scratch when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml to the CPU build (an unpinned torch pulls CUDA).
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q

.PHONY: repro test lint serve install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## repro: install, then run the DVC pipeline end to end on the embedded corpus
repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m magvit.summary

## test: install with dev extras, then run the test suite
# Two pytest workers, each file's tests on one of them (module fixtures stay shared): much of
# the suite waits on process start-ups, so two workers on 2 cores beat one; three were slower
# (see README "Tests").
TEST_WORKERS ?= 2
test: install-dev
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

## serve: start a local Prefect server (unless PREFECT_API_URL is set) and serve the flows
serve: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipelines.serve

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
