# One target per thing a person does. Everything runs from the repo's own .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# .venv is installed from uv.lock by uv, with no resolution (`make lock` is the only
# place that resolves). uv itself is pinned and bootstrapped once by pip into .venv-tools/.
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
UV_STAMP := $(TOOLS)/.uv-$(UV_VERSION)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# uv uses $(PY) (the system Python) and never downloads one; .venv is the project's venv.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install lock lock-check demo test test-fast lint typecheck fmt bench simulate ui-shots clean

$(UV_STAMP):
	@echo "==> bootstrapping uv $(UV_VERSION) into $(TOOLS)/"
	rm -rf $(TOOLS)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check --target $(TOOLS) uv==$(UV_VERSION)
	touch $(UV_STAMP)

# Installs exactly what uv.lock says (the project itself editable, with the dev extra).
$(STAMP): pyproject.toml uv.lock | $(UV_STAMP)
	@echo "==> installing $(VENV) from uv.lock"
	$(UV) sync --frozen --extra dev --python $(PY)
	touch $(STAMP)

install: $(STAMP)

# Re-resolve after editing pyproject.toml's dependencies, then commit uv.lock.
# Newer versions within the bounds: make lock LOCK_ARGS=--upgrade (or --upgrade-package X).
lock: | $(UV_STAMP)
	$(UV) lock --python $(PY) $(LOCK_ARGS)

# Fails fast when uv.lock no longer matches pyproject.toml.
lock-check: | $(UV_STAMP)
	@$(UV) lock --check --python $(PY) || \
	  { echo "uv.lock is out of date with pyproject.toml: run 'make lock' and commit uv.lock" >&2; exit 1; }

demo: $(STAMP)
	$(BIN)/i2v run examples/manifest.csv --dest out/demo --config configs/local.yaml

test: lock-check $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The quick loop: everything but the tests that start a real `prefect server`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not server"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

simulate: $(STAMP)
	$(BIN)/i2v simulate --port 8765

# Screenshots of the Prefect UI (a real server, the deployments, a worker and the CLI on
# the demo manifest) into out/ui-shots/; installs Debian's chromium when missing. Not
# part of `make test`.
ui-shots: $(STAMP)
	$(BIN)/python scripts/ui_shots.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
