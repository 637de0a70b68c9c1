# mailqueue: `make run` starts the whole pipeline locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON := $(shell .ci/find-python)
VENV := .venv
BIN := $(VENV)/bin
LOCAL_REDIS_PORT ?= 6399

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# The demo site, a worker pool per queue, the outbox relay, a local SMTP catcher
# as the provider, and (when REDIS_URL is not set) a private Redis. Open http://127.0.0.1:8000/
run: $(BIN)/.installed
	mkdir -p var/mailbox var/redis
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py check
	@export DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-project.settings}"; \
	if [ -z "$${REDIS_URL:-}" ]; then \
	  export REDIS_SERVER="$$(.ci/redis-server-path)" REDIS_URL="redis://127.0.0.1:$(LOCAL_REDIS_PORT)/0" LOCAL_REDIS_PORT=$(LOCAL_REDIS_PORT); \
	  echo "Open http://127.0.0.1:8000/  (private Redis on port $(LOCAL_REDIS_PORT))"; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start; \
	else \
	  echo "Open http://127.0.0.1:8000/  (Redis at $$REDIS_URL)"; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start web worker_critical worker_default worker_bulk relay smtp; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check mailqueue workers project tests
	$(BIN)/ruff format --check mailqueue workers

typecheck: $(BIN)/.installed
	$(BIN)/mypy mailqueue workers

pytest: $(BIN)/.installed
	.ci/with-test-redis $(BIN)/pytest

test: lint typecheck pytest

# mailqueue beside the other Django mail queues and the floors, on a private Redis and a local sink;
# the first run installs the peers into .bench/ from PyPI. BENCH_ARGS=--smoke for a tiny run.
bench: $(BIN)/.installed
	REDIS_SERVER="$$(.ci/redis-server-path)" $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
