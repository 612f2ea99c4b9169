# Two entry points: `make run` (the service on embedded defaults, with the demo model) and
# `make test` (lint + the test suite). Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q
# `make run` installs what serving the demo needs; `make test` (and setup, lint, bench) the
# full set: the extras, the test and lint tools, and the Python client (clients/python).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean node

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[export]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(PIP) -e '.[export,otel,chain,dev]' -e 'clients/python[signing]'
	touch $(STAMP) $(RUN_STAMP)

setup: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/cidserve serve --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

NODE_STAMP := node_modules/.installed

# `npm install` (not `npm ci`): the lockfile pins every version, but npm leaves out the
# platform-specific optional packages of other platforms, which `npm ci` then refuses.
$(NODE_STAMP): package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

test: $(STAMP) $(NODE_STAMP)
	bash scripts/ci-deps.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
