# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov lints the CloudFormation template (tests/unit/deploy/test_template.py). It lives
# in a virtualenv of its own: its pins clash with moto's. Pinned, so that a new
# release's new checks do not fail an unchanged tree.
CHECKOV_VERSION ?= 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.PHONY: run test lint clean

# The `systemd` extra (systemd-python, for sd_notify and journald) is compiled
# against libsystemd: it needs libsystemd-dev, pkg-config, gcc and the Python
# headers. Where they are missing the build fails; the suite still installs and
# runs without it (the daemon then uses its builtin sd_notify/journald code and
# the systemd-python tests skip, except under CI=true, where they fail).
SYSTEMD_BUILD_LOG := $(VENV)/systemd-python-build.log

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "$(BIN)/python -m pip install --quiet -e '.[local,test,systemd]'"
	@if ! $(BIN)/python -m pip install --quiet -e '.[local,test,systemd]' >$(SYSTEMD_BUILD_LOG) 2>&1; then \
	  echo "WARNING: systemd-python could not be built (see $(SYSTEMD_BUILD_LOG))." >&2; \
	  echo "WARNING: it needs the packages libsystemd-dev pkg-config gcc python3-dev" \
	    "(Debian/Ubuntu: apt-get install libsystemd-dev pkg-config gcc python3-dev;" \
	    "Amazon Linux/Fedora: dnf install systemd-devel gcc python3-devel), then: make clean test." >&2; \
	  echo "WARNING: installing without it; the systemd-python tests will skip." >&2; \
	  echo "$(BIN)/python -m pip install --quiet -e '.[local,test]'"; \
	  $(BIN)/python -m pip install --quiet -e '.[local,test]'; \
	fi
	touch $(STAMP)

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

## Run the whole pipeline locally on the embedded emulator and show the results.
run: $(STAMP)
	$(BIN)/processor local --once

## Run the whole test suite.
test: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python -m pytest

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[local,bench]'
	touch $(BENCH_STAMP)

.PHONY: bench
## Measure the daemon against the floor of this machine; rewrites bench/RESULTS.md
## (a few minutes; not part of `make test`). BENCH_ARGS="--size-mib 1024" for the full large object.
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

## Static checks only (they also run inside `make test`).
lint: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/ruff check worker lambda_trigger processor_shared tests $(wildcard bench)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .processor-local build *.egg-info
