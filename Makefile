# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv if missing and installs the project with `pip install -e .[dev,fid,data]`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tsearch-installed
PYTHON ?= python3

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing tsearch into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --quiet -e '.[dev,fid,data]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tsearch search experiments/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check tsearch tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/trainer_overhead.py

clean:
	rm -rf tsearch-runs .pytest_cache
