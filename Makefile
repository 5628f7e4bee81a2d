# rebook — everything a new machine needs starts here: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock upgrade-check demo test chaos bench bench-console lint format sandbox worker beat flower exporter clean

LOCK := requirements.lock
# `make lock` and `make upgrade-check` resolve with uv, at the version the lock pins
LOCK_ARGS := pyproject.toml --all-extras --universal --python-version 3.11 --quiet
# peers whose own test suites run against rebook's patches (tests/peers): their sdists at the
# locked versions, fetched once by `make install` into $(VENV)/peers so tests run offline
PEERS := flower kombu

# Exactly the locked versions (every dependency, the dev tools' included), then rebook and its dev
# tools (devtools/: rebook-dev, a distribution of its own so the rebook wheel and image never carry
# it) without resolving anything: what CI, `make test` and `make demo` run is what the lock says.
$(STAMP): pyproject.toml devtools/pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rebook and its dev tools into $(VENV) (pinned by $(LOCK)) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -r $(LOCK)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e '.[dev]' -e ./devtools
	@$(BIN)/python -m tests.peers.sdist $(PEERS) >/dev/null || \
		echo "warning: peer sources not fetched; tests/peers fetches them on its first run"
	@touch $@

install: $(STAMP)

$(BIN)/uv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		"uv==$$(sed -n 's/^uv==//p' $(LOCK))"

## re-resolve requirements.lock after a change to pyproject.toml (keeps every other pin)
lock: $(BIN)/uv
	$(BIN)/uv pip compile $(LOCK_ARGS) --custom-compile-command "make lock" -o $(LOCK)

## the newest releases the bounds allow, in a scratch venv: what changed, then the peers' own
## suites (tests/peers: Flower's unit tests with the launcher's patches, ...) and the unit tests
upgrade-check: $(STAMP)
	$(BIN)/python -m tests.peers.upgrade_check

## the whole pipeline on this machine (embedded Redis if none is reachable), live progress
demo: $(STAMP)
	$(BIN)/rebook demo

## unit + integration tests (real Redis, real Celery worker, sandbox over HTTP), spread over
## TEST_WORKERS processes by pytest-xdist (each test keeps its own key prefix, worker and ports);
## TEST_WORKERS=0 runs them in this one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

## the full chaos suite (500 rebooks over 50 performers under kill -9, faults, restarts),
## 10,000 seeds of the simulation (tests/sim), and the long integration runs marked `full`
## (the demo in shadow mode, a wrong API key fixed by a restart)
chaos: $(STAMP)
	REBOOK_CHAOS_SCALE=full $(BIN)/python -m pytest tests/chaos tests/sim -v -s --timeout 7200 -m ''
	$(BIN)/python -m pytest tests/integration tests/component -v -m full

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
