# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $(STAMP)

## Run the whole pipeline locally on the embedded emulator and show the results.
run: $(STAMP)
	$(BIN)/processor local --once

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest

## Static checks only (they also run inside `make test`).
lint: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/ruff check worker lambda_trigger tests $(wildcard bench)

clean:
	rm -rf $(VENV) .processor-local build *.egg-info
