# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment in .venv when it is missing or out of date.
# `make test` is the whole suite after the linters (what CI runs); `make test-fast` is the
# developers' lane: pytest without the tests marked `process` or `slow`, no linters.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test test-fast lint bench

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/transferkit demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "not process and not slow"
