# tokenmall — developer entry points. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job (for now): the seed scenarios through the simulator, checks evaluated.
demo: $(STAMP)
	$(BIN)/tokenmall simulate tests/scenarios/seed-*.yaml tests/scenarios/rules-refunds-plan-refusals.yaml

## The test suite: lint, types, unit and property tests.
test: lint unit

lint: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

## Heavy runs, not part of the tests: 1M-member settlement and orders/s (prints JSON).
bench: $(STAMP)
	$(BIN)/tokenmall bench engine --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
