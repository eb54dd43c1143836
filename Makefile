# Two commands matter: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.toml

.PHONY: run test test-postgres bench chaos fuzz audit clean venv

# `make run` installs what running needs; `make test` adds the test tools. Both install exactly
# the versions in requirements.lock (a constraints file), never whatever is newest that day.
RUN_STAMP := $(VENV)/.installed-run
LOCKED := -c requirements.lock

$(RUN_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(LOCKED) -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml requirements.lock $(RUN_STAMP)
	$(BIN)/pip install --quiet $(LOCKED) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/bridge serve --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest

# The whole suite with every bridge it starts on PostgreSQL ($$BRIDGE_TEST_POSTGRES, default
# the local server's `test` database; each bridge gets a schema of its own).
test-postgres: $(STAMP)
	BRIDGE_TEST_STORE=postgres $(BIN)/python -m pytest --ignore=tests/chaos

bench: $(STAMP)
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/forward.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/glue.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/growth.py
	$(BIN)/python bench/pg_round_trips.py
	$(BIN)/python bench/loop.py

chaos: $(STAMP)
	CHAOS_SCALE=10 $(BIN)/python -m pytest tests/chaos -q --timeout 900

# Open-ended coverage-guided fuzzing with a fresh seed; crashes are written to fuzz/crashes/.
fuzz: $(STAMP)
	mkdir -p fuzz/crashes
	$(BIN)/python fuzz/verifiers.py -atheris_runs=$${RUNS:-1000000} -artifact_prefix=fuzz/crashes/

# Needs a network that reaches PyPI's JSON API or OSV; see docs/security.md.
audit: $(STAMP)
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements.lock

clean:
	rm -rf $(VENV) data .pytest_cache
