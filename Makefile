# The two commands of the README's first screen, and the pieces they are made of.
# PYTHON must be a CPython 3.11 (or newer); torch 2.13.0 (CPU) is installed first so that pip does not pull a
# CUDA build when resolving the project's torch range.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test compose-test lint example clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'

# The service, embedded default: SQLite and files under ./.sepconv, worker processes started by the server,
# on http://127.0.0.1:8000 (API docs at /docs). Any SEPCONV_* variable in the environment applies.
run: install
	$(BIN)/sepconv serve

# Build the example models (a small CNN trained on scikit-learn's bundled digits) and convert one.
example: install-dev
	$(BIN)/python examples/digits.py examples/out
	$(BIN)/sepconv convert examples/out/digits.onnx -o examples/out/digits-sep.onnx --inputs examples/out/digits-test.npz --report examples/out/digits-sep.json

test: install-dev
	$(BIN)/python -m pytest

# The Dockerfile and docker-compose.yml for real, under podman (installed from Debian's packages if missing; needs
# root or password-less sudo): builds the image, runs the stack with two workers, converts through the SDK, loses a
# worker, restarts the API, tears it down. Skips, saying why, where no container engine can be had.
compose-test: install-dev
	$(BIN)/python -m pytest -m container tests/service/test_compose_podman.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) examples/out .pytest_cache
