# Two commands do all set-up on a fresh machine with only Python 3.11 and pip:
#   make demo   - install everything, run the Prefect `ingest` flow (on Prefect's temporary
#                 server) against the offline world into ./demo-store, twice
#   make up     - the whole local stack: offline world, Prefect server and UI, work pool,
#                 deployments, worker; prints the UI link, stops everything on Ctrl-C
#   make test   - install everything and run the test suite
PYTHON ?= python3
UV := $(PYTHON) -m uv
export UV_PYTHON_DOWNLOADS := never
# Bytecode is compiled at install (~20 s once), not at every process start: where
# PYTHONDONTWRITEBYTECODE is set (containers, CI images) Python never caches it, and each
# command, flow run and worker recompiled prefect and its stack from source (~2 s a start).

.PHONY: setup browser demo up test bench lint clean

.venv/.synced: pyproject.toml world/pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet 'uv>=0.5'
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PYTHON)
	@touch $@

setup: .venv/.synced

demo: .venv/.synced
	$(UV) run --frozen python scripts/demo.py

# Ports and more: make up UP_ARGS="--prefect-port 4300 --stac-port 8090 --data-port 8091"
# (python -m flows.stack --help). `python -m flows.stack serve` runs without pool and worker.
up: .venv/.synced
	$(UV) run --frozen python -m flows.stack up $(UP_ARGS)

# Debian's chromium for the Prefect UI test (tests/flows/test_ui_browser.py), when missing.
browser:
	@bash scripts/install-browser.sh

test: .venv/.synced browser
	$(UV) run --frozen pytest -q

bench: .venv/.synced
	$(UV) run --frozen python scripts/bench.py $(BENCH_ARGS)

# Style (ruff), types (mypy, files in pyproject.toml) and the import contracts (import-linter).
lint: .venv/.synced
	$(UV) run --frozen ruff check src world/src flows tests scripts
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports

clean:
	rm -rf demo-store demo-catalog .world .bench test-output
