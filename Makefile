# Two commands do all set-up on a fresh machine with only Python 3.11 and pip:
#   make demo   - install everything, start the offline world, ingest into ./demo-store
#   make test   - install everything and run the test suite
PYTHON ?= python3
UV := $(PYTHON) -m uv
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup browser demo test bench lint clean

.venv/.synced: pyproject.toml world/pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet 'uv>=0.5'
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	@touch $@

setup: .venv/.synced

demo: .venv/.synced
	$(UV) run --frozen python scripts/demo.py

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
