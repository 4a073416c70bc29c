# tokenmall — developer entry points. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KAFKA_JARS := .cache/kafka/lib/.complete

.PHONY: setup kafka demo simulate-demo test lint unit integration bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Apache Kafka from Maven Central into the ignored cache (once; needs Java 17 and Maven).
kafka:
	bash deploy/kafka/kafka.sh fetch

## The main job: Kafka + the four services in the background, then the seed scenarios
## replayed through their HTTP APIs, each compared with the simulator. `tokenmall dev down` stops it.
demo: $(STAMP) kafka
	$(BIN)/tokenmall dev up
	$(BIN)/tokenmall replay --compare tests/scenarios/seed-*.yaml tests/scenarios/rules-refunds-plan-refusals.yaml

## The same scenarios on the rules engine alone (no services).
simulate-demo: $(STAMP)
	$(BIN)/tokenmall simulate tests/scenarios/seed-*.yaml tests/scenarios/rules-refunds-plan-refusals.yaml

## The test suite: lint, types, unit + property tests, then integration and e2e tests on a
## real Kafka broker and PostgreSQL server that the tests start themselves.
test: lint unit integration

lint: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

integration: $(STAMP) kafka
	$(BIN)/python -m pytest -q -m integration

## Heavy runs, not part of the tests: 1M-member settlement, orders/s, and the default
## projection of each preset against its 60 s bound (each prints JSON).
bench: $(STAMP) kafka
	$(BIN)/tokenmall bench engine --json
	$(BIN)/tokenmall bench project
	$(BIN)/tokenmall bench platform --members 20000 --orders-single 2000 --orders-batch 20000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
