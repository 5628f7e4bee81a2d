# rebook — everything a new machine needs starts here: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test chaos bench bench-console lint format sandbox worker beat flower exporter clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rebook and its dev tools into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

## the whole pipeline on this machine (embedded Redis if none is reachable), live progress
demo: $(STAMP)
	$(BIN)/rebook demo

## unit + integration tests (real Redis, real Celery worker, sandbox over HTTP)
test: $(STAMP)
	$(BIN)/python -m pytest

## the full chaos suite (500 rebooks over 50 performers under kill -9, faults, restarts) and
## 10,000 seeds of the simulation (tests/sim)
chaos: $(STAMP)
	REBOOK_CHAOS_SCALE=full $(BIN)/python -m pytest tests/chaos tests/sim -v -s --timeout 7200 -m ''

## rebook vs plain Celery, side by side on 127.0.0.1 (< 5 min on 2 cores): markdown table + JSON
## larger runs: make bench BENCH_ARGS="--sizes 1000,10000,100000,1000000 --plain-max 100000"
bench: $(STAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.console

## the console alone at 100,000 records: /api/rebooks and /rebooks timed through Flower's launcher
bench-console: $(STAMP)
	$(BIN)/python -m tests.bench.console $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## local processes, one per terminal (or all at once with `honcho start`)
sandbox: $(STAMP)
	$(BIN)/rebook sandbox
worker: $(STAMP)
	$(BIN)/celery -A worker worker -Q rebook.events,rebook.work -E -l INFO
beat: $(STAMP)
	$(BIN)/celery -A worker beat -l INFO -s $${TMPDIR:-/tmp}/rebook-beat-schedule
flower: $(STAMP)
	$(BIN)/python -m worker.operations.flower
exporter: $(STAMP)
	$(BIN)/python -m worker.operations.exporter

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
