# Two entry points for people (README quick start) and one for CI:
#   make demo   set up, then run the main job
#   make test   set up if needed, then run the whole test suite
#   make lint   ruff and mypy (CI runs it after the tests)
# Setup is idempotent: the venv and node_modules are rebuilt only when their inputs change.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_STAMP := contracts/node_modules/.installed
# This machine's pip configuration warns once per package about local index folders it
# does not have; the warnings say nothing about the install, so they are filtered out.
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: setup demo test lint contracts gas clean

setup: $(PY_STAMP) $(NPM_STAMP)

$(PY_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "swarmnode needs Python >= 3.11; set PYTHON=python3.11")'
	@echo "setup: python virtual environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $@

$(NPM_STAMP): contracts/package.json contracts/package-lock.json
	@echo "setup: solc and anvil from npm in contracts/node_modules"
	@cd contracts && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(VENV)/bin/swarmnode simulate simulations/demo.toml

# Two workers (pytest-xdist), a test module per worker: most tests wait on chains, sockets
# and daemons, not on the CPU. --durations keeps each issue's test-time budget visible.
test: setup
	$(PY) -m pytest -n 2 --dist loadfile --durations=20

lint: setup
	$(VENV)/bin/ruff check swarmnode tests simulations protocol
	$(VENV)/bin/mypy swarmnode

contracts: $(NPM_STAMP)
	cd contracts && node build.mjs

gas: setup
	$(PY) simulations/gas_report.py

clean:
	rm -rf $(VENV) contracts/node_modules
