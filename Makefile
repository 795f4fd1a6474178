# Entry points for a fresh machine: `make quickstart` and `make test` (everything CI runs);
# `make test-fast` while working (about 50 s on 2 shared cores).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-installs when pyproject.toml changes; skipped otherwise.
STAMP := $(VENV)/.medlora-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv quickstart test test-fast

venv: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -U pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev,docs]'
	touch $@

quickstart: venv
	$(BIN)/medlora quickstart --out medlora-quickstart

# Lint and the tests that need no pre-training, training run, export or real model
# (pytest --fast, see tests/conftest.py).
test-fast: venv
	$(BIN)/ruff check medlora tests examples benchmarks hooks
	$(BIN)/python -m pytest -q --fast

test: venv
	$(BIN)/ruff check medlora tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict -d site
	$(BIN)/python -m pytest -q --run-slow --durations=25
