.PHONY: setup serve test test-fast lint bench-quality bench-serving bench-training
VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

serve: setup
	$(PY) -m app.cli serve

test: setup
	bash scripts/test.sh

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not postgres"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-quality: setup
	$(PY) -m bench.quality --quick

bench-serving: setup
	$(PY) -m bench.serving

bench-training: setup
	$(PY) -m bench.training
