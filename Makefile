# Two commands matter: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
SHELL := /bin/bash
# A failed install fails make, even piped through $(PROGRESS).
.SHELLFLAGS := -o pipefail -c
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.toml

.PHONY: run test test-postgres lint contract fuzz-check check bench chaos fuzz audit clean venv

# `make run` installs what running needs; `make test` adds the test tools. Both install exactly
# the versions in requirements.lock (a constraints file), never whatever is newest that day.
RUN_STAMP := $(VENV)/.installed-run
LOCKED := -c requirements.lock
# pip's output cut to one short line per package fetched, numbered, so a long install shows it
# is moving: "  [12] jinja2-3.1.6".
PROGRESS := awk '/^(Collecting|Processing|Downloading) /{n++; f=$$2; sub(/.*\//, "", f); \
	printf "  [%d] %s\n", n, f; fflush()} /^Successfully installed/{print "  done"}'

$(RUN_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "installing what the bridge runs on (about a minute on a fresh machine)..."
	$(BIN)/pip install --progress-bar off $(LOCKED) -e . | $(PROGRESS)
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml requirements.lock $(RUN_STAMP)
	@echo "installing the test tools (about three minutes on a fresh machine)..."
	$(BIN)/pip install --progress-bar off $(LOCKED) -e '.[test]' | $(PROGRESS)
	touch $(STAMP)

venv: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/bridge serve --config $(CONFIG)

# The suite across every core (pytest-xdist); JOBS=1 runs it in one process.
JOBS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS)

# The whole suite with every bridge it starts on PostgreSQL ($$BRIDGE_TEST_POSTGRES, default
# the local server's `test` database; each bridge gets a schema of its own).
test-postgres: $(STAMP)
	BRIDGE_TEST_STORE=postgres $(BIN)/python -m pytest -n $(JOBS) --ignore=tests/chaos

# Checks that are steps of CI of their own, each failing it: the linters and the type checker,
# the admin API against its OpenAPI document (schemathesis), and bounded fuzzing (atheris).
lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench fuzz
	$(BIN)/mypy
	@! grep -rn "type: ignore" bridge --include='*.py' || { echo "no type: ignore in bridge/"; exit 1; }
	$(BIN)/hadolint Dockerfile

contract: $(STAMP)
	$(BIN)/python -m pytest -m step tests/steps/test_admin_contract.py

fuzz-check: $(STAMP)
	$(BIN)/python -m pytest -m step tests/steps/test_fuzz.py

check: test lint contract fuzz-check

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
