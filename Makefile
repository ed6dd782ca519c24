.PHONY: setup serve test test-fast lint bench-quality bench-serving bench-training fleet fleet-down lock
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

# --- fleet (issue 13): replicas + Celery workers + nginx + S3 on this machine (docs/deploy.md)
fleet: setup
	bash scripts/fleet.sh up

fleet-down:
	bash scripts/fleet.sh down

# regenerate constraints.txt from the shared virtualenv (after adding a dependency)
lock:
	bash scripts/lock.sh
